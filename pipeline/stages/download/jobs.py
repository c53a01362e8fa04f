"""One image's job (what to fetch, how often tried) and its result, with the result kinds."""
from __future__ import annotations

from dataclasses import dataclass, field


# Result kinds
DONE = "done"          # downloaded (or adopted), verified, renamed into place
FAIL = "failed"        # permanent failure: the reason is stored
GONE = "dead"          # 404/410 or Etsy's placeholder
RETRY = "retry"        # transient failure: try again later (or fail after max_tries)
RELEASED = "released"  # abandoned on a stop: the image stays `discovered`
LOCAL_ERROR = "local"  # our side failed (disk full, permissions): never the image's fault


@dataclass(order=True)
class Job:
    not_before: float
    listing_id: int = field(compare=False)
    image_id: int = field(compare=False)
    url: str | None = field(compare=False)
    tries: int = field(default=0, compare=False)

    @property
    def key(self) -> tuple[int, int]:
        return (self.listing_id, self.image_id)


@dataclass
class Result:
    job: Job
    kind: str
    reason: str = ""
    nbytes: int = 0
    width: int = 0
    height: int = 0
    sha256: str = ""
    adopted: bool = False
