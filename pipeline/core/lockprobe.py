"""``python -m pipeline.core.lockprobe PATH-shm``: print {pid: mode} from fcntl(F_GETLK).

A process of its own because it must have no SQLite connection (see pipeline.core.locks)."""
import json
import sys
from pathlib import Path

from pipeline.core.locks import probe_shm

if __name__ == "__main__":
    print(json.dumps({str(pid): mode for pid, mode in probe_shm(Path(sys.argv[1])).items()}))
