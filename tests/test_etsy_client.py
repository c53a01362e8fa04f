"""The Etsy client against the local Etsy API over real HTTP: key, rate, quota, retries."""
from __future__ import annotations

import logging
import os
import threading

import pytest

from etsy_support import KEY
from pipeline.core.errors import UserError
from pipeline.etsy.client import EtsyClient
from pipeline.etsy.errors import AuthError, ClientError, QuotaExhausted, RequestFailed
from pipeline.etsy.quota import shared_bucket
from pipeline.etsy.settings import Redactor, api_base_url, load_rate_config, read_api_key
from pipeline.sandbox.etsy_api import LocalEtsyAPI


class ListHandler(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@pytest.fixture
def log():
    logger = logging.getLogger(f"test.etsy.{id(object())}")
    logger.propagate = False
    handler = ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.lines = handler.lines
    return logger


def client(api, log=None, **kw):
    kw.setdefault("qps", 1000)
    kw.setdefault("retry_base_s", 0.005)
    kw.setdefault("retry_max_s", 0.02)
    kw.setdefault("daily_floor", 0)
    return EtsyClient(api.base_url, KEY, log=log, **kw)


def test_key_from_env_or_secret_file(tmp_root, monkeypatch):
    monkeypatch.delenv("ETSY_API_KEY", raising=False)
    cfg = tmp_root.config
    with pytest.raises(UserError, match="no Etsy API key"):
        read_api_key(cfg)
    monkeypatch.setenv("ETSY_API_KEY", "onlythekeystring")
    with pytest.raises(UserError, match="keystring:shared_secret"):
        read_api_key(cfg)
    monkeypatch.setenv("ETSY_API_KEY", KEY)
    assert read_api_key(cfg) == KEY
    monkeypatch.delenv("ETSY_API_KEY")
    key_file = tmp_root.path / "key"
    key_file.write_text(KEY + "\n")
    os.chmod(key_file, 0o644)
    (tmp_root.path / "imageselector.toml").write_text(f'[etsy]\nkey_file = "{key_file}"\n')
    from pipeline.core.root import Root

    root = Root(tmp_root.path)
    with pytest.raises(UserError, match="readable by others"):
        read_api_key(root.config)
    os.chmod(key_file, 0o600)
    assert read_api_key(root.config) == KEY


def test_base_url_env_overrides_config(tmp_root, monkeypatch):
    monkeypatch.delenv("ETSY_API_BASE_URL", raising=False)
    assert api_base_url(tmp_root.config) == "https://api.etsy.com/v3/application"
    monkeypatch.setenv("ETSY_API_BASE_URL", "http://127.0.0.1:9/v3/application/")
    assert api_base_url(tmp_root.config) == "http://127.0.0.1:9/v3/application"


def test_rate_config_from_root_file(tmp_root):
    (tmp_root.db_dir / "qps_config.json").write_text('{"qps": 3, "daily_floor": 7, "slowdown_fraction": 0.9}')
    assert load_rate_config(tmp_root) == {"qps": 3.0, "daily_floor": 7, "slowdown_fraction": 0.9}
    (tmp_root.db_dir / "qps_config.json").write_text('{"qps": "fast"}')
    with pytest.raises(UserError, match="qps must be a number"):
        load_rate_config(tmp_root)


def test_redaction_and_repr():
    red = Redactor(KEY)
    keystring, secret = KEY.split(":")
    text = red(f"echo {KEY} and {secret} and {keystring}")
    assert keystring not in text and secret not in text
    with LocalEtsyAPI(listings=5, api_key=KEY) as api:
        c = client(api)
        assert KEY not in repr(c) and secret not in repr(c)


def test_shared_secret_refused_is_auth_error(log):
    with LocalEtsyAPI(listings=5, api_key=KEY) as api:
        c = EtsyClient(api.base_url, KEY.split(":")[0] + ":wrongsecret", qps=1000, log=log)
        with pytest.raises(AuthError) as err:
            c.find_active(967, None, None)
        assert err.value.status == 403 and err.value.request_id


def test_bucket_is_shared_and_holds_the_server_limit():
    # three threads at 20 QPS together against a server allowing 20: no 429
    with LocalEtsyAPI(listings=5, api_key=KEY, qps=20) as api:
        clients = [client(api, qps=20) for _ in range(3)]
        assert clients[0].bucket is clients[1].bucket is shared_bucket(api.base_url, 20)
        errors = []

        def work(c):
            try:
                for _ in range(10):
                    c.find_active(967, None, None, limit=1)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        counters = api.stats()["counters"]
        assert counters["requests"] == 30
        assert counters.get("status_429", 0) == 0


def test_429_is_honoured(log):
    with LocalEtsyAPI(listings=5, api_key=KEY, retry_after_s=0) as api:
        c = client(api, log=log)
        api.fail_next("429", 3)
        assert c.find_active(967, None, None, limit=1)["count"] == 5
        assert c.stats_snapshot()["throttled"] == 3
        assert c.stats_snapshot().get("retries", 0) == 0  # a 429 is a wait, not a failed attempt
        assert any("429" in line for line in log.lines)


def test_5xx_retried_then_gives_up_with_request_id(log):
    with LocalEtsyAPI(listings=5, api_key=KEY) as api:
        c = client(api, log=log)
        api.fail_next("5xx", 2)
        assert c.find_active(967, None, None)["count"] == 5
        assert c.stats_snapshot()["retries"] == 2
        api.set_fault("5xx", 1.0, 100)
        c2 = client(api, log=log, max_attempts=3)
        with pytest.raises(RequestFailed) as err:
            c2.find_active(967, None, None)
        assert err.value.request_id and err.value.request_id in str(err.value)


@pytest.mark.parametrize("fault", ["malformed", "html", "error200", "bad_fields", "drop"])
def test_bad_bodies_are_retried_counted_and_logged(fault, log):
    with LocalEtsyAPI(listings=30, api_key=KEY) as api:
        c = client(api, log=log)
        api.fail_next(fault, 2)
        page = c.find_active(967, None, None, limit=10)
        assert page["count"] == 30 and len(page["results"]) == 10
        stats = c.stats_snapshot()
        assert stats["retries"] == 2
        if fault != "drop":
            assert stats.get("bad_responses", 0) + stats.get("bad_items", 0) >= 2
            # each problem is logged with the request id Etsy gave
            assert sum("request " in line and "-" in line.split("request ")[1][:40] for line in log.lines) >= 2


def test_bad_items_after_retries_are_returned_for_the_caller_to_drop(log):
    with LocalEtsyAPI(listings=30, api_key=KEY, faults={"bad_fields": 1.0}) as api:
        c = client(api, log=log, max_attempts=2)
        page = c.find_active(967, None, None, limit=10)
        from pipeline.etsy.shapes import validate_listing_page

        assert len(validate_listing_page(page)) == 1


def test_slow_answer_times_out_and_is_retried():
    with LocalEtsyAPI(listings=5, api_key=KEY, slow_s=0.6) as api:
        c = client(api, timeout_s=0.2)
        api.fail_next("slow", 1)
        assert c.find_active(967, None, None)["count"] == 5
        assert c.stats_snapshot()["network_errors"] == 1


def test_quota_floor_stops_before_spending_it():
    with LocalEtsyAPI(listings=5, api_key=KEY, qpd=20, day_s=3600) as api:
        c = client(api, daily_floor=5)
        done = 0
        with pytest.raises(QuotaExhausted) as err:
            for _ in range(30):
                c.find_active(967, None, None, limit=1)
                done += 1
        assert done == 15
        assert api.stats()["counters"]["requests"] == 15  # nothing spent below the floor
        assert "floor 5" in str(err.value)
        assert c.quota.info()["remaining_today"] == 5


def test_daily_429_is_quota_exhausted():
    with LocalEtsyAPI(listings=5, api_key=KEY, qpd=3, day_s=3600) as api:
        c = client(api, daily_floor=0)
        for _ in range(3):
            c.find_active(967, None, None, limit=1)
        c.quota.forget()  # as after a wait: the client does not know what is left
        with pytest.raises(QuotaExhausted) as err:
            c.find_active(967, None, None, limit=1)
        assert err.value.status == 429 and err.value.retry_after_s > 3000


def test_slowdown_near_the_end_of_the_day_and_limit_from_headers():
    with LocalEtsyAPI(listings=5, api_key=KEY, qps=4, qpd=10, day_s=3600) as api:
        c = client(api, qps=50, slowdown_fraction=0.5, slow_factor=0.25)
        c.find_active(967, None, None, limit=1)
        assert c._rate() == 4  # Etsy's per-second limit wins over ours
        for _ in range(5):
            c.find_active(967, None, None, limit=1)
        assert c.quota.used_fraction() >= 0.5
        assert c._rate() == 1.0


def test_alert_when_the_daily_limit_drops():
    alerts = []
    with LocalEtsyAPI(listings=5, api_key=KEY, qpd=3000) as api:
        c = client(api, known_daily_limit=5000, alert=lambda kind, text: alerts.append((kind, text)))
        c.find_active(967, None, None, limit=1)
        c.find_active(967, None, None, limit=1)
    assert alerts == [("quota_dropped", "Etsy lowered the daily request limit from 5000 to 3000")]


def test_not_found_is_a_client_error():
    with LocalEtsyAPI(listings=5, api_key=KEY) as api:
        with pytest.raises(ClientError) as err:
            client(api).shop(1)
        assert err.value.status == 404


def test_stop_interrupts_waiting():
    from pipeline.etsy.errors import Stopped

    stop = threading.Event()
    with LocalEtsyAPI(listings=5, api_key=KEY, faults={"429": (1.0, 100)}, retry_after_s=30) as api:
        c = client(api, stop_check=stop.is_set)
        threading.Timer(0.3, stop.set).start()
        with pytest.raises(Stopped):
            c.find_active(967, None, None)
