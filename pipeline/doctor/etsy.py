"""The Etsy key: present, in ``keystring:shared_secret`` form, and accepted by the configured
API in one live call, with what the quota headers say."""
from __future__ import annotations

import logging
import os

from pipeline.core.errors import UserError
from pipeline.doctor.check import WARNING, Check, passed, problem
from pipeline.doctor.context import DoctorContext
from pipeline.doctor.registry import doctor_check

AREA = "etsy"
# One page of one listing: the cheapest call every Etsy app may make (the local API has it too).
PROBE_PATH, PROBE_PARAMS = "/listings/active", {"limit": 1}


def _key_source(ctx: DoctorContext) -> tuple[bool, str]:
    from pipeline.etsy.settings import ENV_KEY

    if os.environ.get(ENV_KEY, "").strip():
        return True, f"${ENV_KEY}"
    key_file = str(ctx.cfg("etsy.key_file") or "").strip()
    if not key_file:
        return False, "etsy.key_file"
    return os.path.exists(os.path.expanduser(key_file)), key_file


@doctor_check(AREA, order=10)
def etsy_checks(ctx: DoctorContext) -> list[Check]:
    from pipeline.etsy.settings import api_base_url, read_api_key

    present, where = _key_source(ctx)
    if not present:
        target = "a file" if where == "etsy.key_file" else where
        return [problem(AREA, "key", f"no Etsy API key ({target} does not exist)",
                        f"write keystring:shared_secret to {target} (chmod 600) and name it in "
                        f"etsy.key_file of {ctx.config_path}, or set ETSY_API_KEY")]
    try:
        read_api_key(ctx.root.config)
    except UserError as exc:
        text = str(exc)
        if "keystring:shared_secret" in text:
            fix = (f"append ':' and the app's shared secret (Your apps on etsy.com/developers) "
                   f"to the key in {where}")
        else:
            fix = f"chmod 600 {where}" if "readable by others" in text else f"correct {where}"
        return [problem(AREA, "key form", text, fix)]
    out = [passed(AREA, "key", f"keystring:shared_secret from {where}")]
    out.append(_live_call(ctx, api_base_url(ctx.root.config), where))
    return out


def _live_call(ctx: DoctorContext, base_url: str, where: str) -> Check:
    from pipeline.etsy.client import EtsyClient
    from pipeline.etsy.errors import AuthError, EtsyError, QuotaExhausted

    quiet = logging.getLogger("imageselector.doctor.etsy")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False   # the answer is the check's line, not a log on stderr
    client = EtsyClient.from_root(ctx.root, log=quiet, max_attempts=2, retry_base_s=0.5,
                                  retry_max_s=1.0, max_429=1)
    try:
        client.get(PROBE_PATH, PROBE_PARAMS)
    except AuthError as exc:
        return problem(AREA, "key accepted", f"{base_url}: {exc}",
                       f"put the key and shared secret of an active app in {where} "
                       f"(etsy.com/developers, Your apps)")
    except QuotaExhausted as exc:
        return problem(AREA, "key accepted", f"{base_url}: key accepted, but {exc}",
                       "wait for the quota to refill (the sync resumes by itself)", WARNING)
    except EtsyError as exc:
        return problem(AREA, "key accepted", f"{base_url} did not answer: {str(exc)[:240]}",
                       "check the network and etsy.base_url" + (
                           f"; start the local API: {ctx.command('start', 'etsy-api')}"
                           if not ctx.production else ""))
    finally:
        client.close()
    q = client.quota.info()
    text = (f"{base_url} accepted the key: {_n(q['remaining_today'])} of "
            f"{_n(q['limit_per_day'])} requests left today, {_n(q['limit_per_second'])}/s")
    if q["remaining_today"] is not None and q["remaining_today"] <= q["daily_floor"]:
        return problem(AREA, "quota", text + f" (at or below the floor {q['daily_floor']})",
                       "the day's quota is spent: the sync resumes when it refills", WARNING)
    if q["limit_per_day"] is None:
        return problem(AREA, "quota", text + " (no quota headers in the answer)",
                       "check etsy.base_url points at the Etsy Open API v3", WARNING)
    return passed(AREA, "key accepted", text)


def _n(value) -> str:
    return "?" if value is None else f"{value:,}"
