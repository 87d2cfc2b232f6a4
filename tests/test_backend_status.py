"""The backend status watch and the GPU cost estimate, with an injected clock; the model
picker's provisional list against a backend that refuses connections (a real client)."""

from __future__ import annotations

import asyncio
import time

import pytest

from devtools.testkit.procs import refusing_url, silent_url
from ui.backend_access.client import BackendClient, ModelInfo
from ui.backend_access.models import ModelDirectory
from ui.backend_access.status import BackendWatch, GpuPrice, money, reply_cost_text
from ui.settings import Settings
from ui.view.render import backend_status_html


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def watch_with(clock: Clock, price: GpuPrice | None = None, typical: float = 20.0) -> BackendWatch:
    return BackendWatch(
        price or GpuPrice(per_hour=3.6, concurrency=4),
        idle_timeout=900.0,
        typical=lambda: typical,
        clock=clock,
    )


def test_reply_cost_is_instance_seconds_times_price_per_second_over_concurrency() -> None:
    price = GpuPrice(per_hour=3.6, concurrency=4)  # $0.001 per instance-second
    assert price.per_second == pytest.approx(0.001)
    assert price.reply_cost(8.0) == pytest.approx(8.0 * 0.001 / 4)
    assert price.cold_start_cost(20.0) == pytest.approx(0.02)  # the whole instance
    assert GpuPrice(per_hour=3.6, concurrency=1).reply_cost(8.0) == pytest.approx(0.008)
    text = reply_cost_text(price, 8.0)
    assert text.startswith("≈ $0.0020 GPU cost")
    assert "estimate" in text and "8.0 s" in text and "1/4" in text and "$3.60/h" in text


def test_money_keeps_small_amounts_readable() -> None:
    assert money(0.00042) == "$0.00042"
    assert money(0.0123) == "$0.0123"
    assert money(1.2) == "$1.20"


def test_default_price_is_the_l4_with_the_deploys_cpu_and_memory() -> None:
    # README "Honest cost": L4 $0.0001867/s + 8 vCPU x $0.000018/s + 32 GiB x $0.000002/s.
    settings = Settings(_env_file=None)
    per_second = 0.0001867 + 8 * 0.000018 + 32 * 0.000002
    assert settings.gpu_price_per_hour == pytest.approx(per_second * 3600, abs=0.001)
    assert settings.gpu_concurrency == 4


def test_a_cold_start_goes_starting_loading_ready_and_is_costed() -> None:
    clock = Clock()
    watch = watch_with(clock)
    assert watch.view().state == "unknown"
    watch.waking()
    clock.now += 3
    view = watch.view()
    assert view.state == "starting"
    assert view.text == "Starting a GPU instance… 3 s"
    assert "usually ~20 s" in view.detail and "$0.0200 for 20.0 s" in view.detail  # 20 s x $0.001
    watch.answered()
    watch.loading("smollm2:135m")
    clock.now += 2
    view = watch.view()
    assert view.state == "loading"
    assert (
        view.text == "Loading SmolLM2 135M Instruct into GPU memory… 5 s"
    )  # counted from the start
    watch.ready("smollm2:135m")
    view = watch.view()
    assert view.state == "ready" and view.settled
    assert view.text == "Ready: SmolLM2 135M Instruct"
    assert "last cold start ≈ $0.0050 for 5.0 s" in view.detail
    watch.replied("smollm2:135m", 8.0)
    assert "last reply $0.0020" in watch.view().detail


def test_ready_turns_asleep_after_the_idle_time_without_an_answer() -> None:
    clock = Clock()
    watch = watch_with(clock)
    watch.ready("m")
    clock.now += 901
    view = watch.view()
    assert view.state == "asleep"
    assert "asleep" in view.text and "~20 s" in view.detail


def test_unreachable_says_why_without_addresses_and_assertively() -> None:
    watch = watch_with(Clock())
    watch.failed("Access denied for audience https://secret-backend-xyz.a.run.app/ here.")
    view = watch.view()
    assert view.state == "unreachable"
    assert "https://" not in view.detail and "secret-backend" not in view.detail
    # The page script (ui/view/a11y.py) speaks it assertively from this state; the line itself
    # is no live region (it is replaced on every refresh: it would not be heard reliably).
    line = backend_status_html(watch.view())
    assert 'data-state="unreachable"' in line and "role=" not in line
    watch.ready("m")
    assert 'data-state="ready"' in backend_status_html(watch.view())


def test_picker_offers_the_catalog_meanwhile_then_the_last_list_seen() -> None:
    with refusing_url() as url:
        settings = Settings(backend_url=url, auth="none", probe_timeout=0.5)
        directory = ModelDirectory(settings, BackendClient(settings))
        choices = asyncio.run(directory.choices(deadline=5.0))
    assert choices.provisional and choices.problem
    # A backend on this machine: the embedded engine's models (catalog), not the GPU image's.
    assert {label.tag for label in choices.labels} == {"gemma3:270m", "smollm2:135m"}
    assert directory.last_seen() is None


def test_pages_asking_at_once_share_one_list_request_and_its_failure() -> None:
    """A page's load fills Chat, Compare, Battle and the status line at once (ui/pages/
    page_load.py). On a backend that does not answer, they share one request and its
    timeout instead of each waiting out its own after the others'; and no page then asks the
    silent backend what a model can do (the catalog says, until the backend answers)."""
    with silent_url() as (url, requests):
        settings = Settings(backend_url=url, auth="none", probe_timeout=0.5)
        directory = ModelDirectory(settings, BackendClient(settings))

        async def a_page(model: str) -> tuple[bool, bool]:  # its list, then its image control
            choices = await directory.choices(deadline=5.0)
            return choices.provisional, await directory.can_see(model)

        async def a_page_load() -> list[tuple[bool, bool]]:
            models = ["gemma3:4b", "smollm2:135m", "gemma3:4b", "smollm2:135m"]
            return await asyncio.gather(*(a_page(model) for model in models))

        pages = asyncio.run(a_page_load())
        at_once = list(requests)
        asyncio.run(directory.choices(deadline=5.0))  # one caller alone, for comparison
        alone = requests[len(at_once) :]
    assert pages == [(True, True), (True, False)] * 2  # provisional lists; the catalog's answer
    tags = [line for line in at_once if "/api/tags" in line]
    assert tags and len(tags) == len([line for line in alone if "/api/tags" in line])
    assert not [line for line in requests if "/api/show" in line]


def test_picker_offers_the_allow_list_before_the_catalog() -> None:
    with refusing_url() as url:
        settings = Settings(
            backend_url=url, auth="none", probe_timeout=0.5, allowed_models=["smollm2:135m"]
        )
        directory = ModelDirectory(settings, BackendClient(settings))
        choices = asyncio.run(directory.choices(deadline=5.0))
    assert choices.provisional
    assert [label.tag for label in choices.labels] == ["smollm2:135m"]


def test_a_backend_asleep_by_the_clock_is_seen_waking_again() -> None:
    clock = Clock()
    watch = BackendWatch(GpuPrice(3.6, 4), idle_timeout=8.0, typical=lambda: 20.0, clock=clock)
    watch.ready("m")
    clock.now += 2
    watch.waking()  # a slow probe of a backend that answered 2 s ago: still ready
    assert watch.view().state == "ready"
    clock.now += 9
    assert watch.view().state == "asleep"
    watch.waking()
    assert watch.view().state == "starting"


def test_the_refresh_takes_only_a_list_the_backend_gave_recently() -> None:
    with refusing_url() as url:
        settings = Settings(backend_url=url, auth="none", probe_timeout=0.5)
        directory = ModelDirectory(settings, BackendClient(settings), ttl=0.2)
    answered: list[bool] = []
    directory.on_answer.append(lambda: answered.append(True))
    assert directory.fresh() is None
    info = ModelInfo(
        name="smollm2:135m", family="llama", reported_family="llama", parameter_size="135M",
        quantization=None, size_bytes=None, backend_url=url,
    )  # fmt: skip
    directory.remember([info])
    assert answered == [True]
    fresh = directory.fresh()
    assert fresh is not None and not fresh.provisional
    assert [label.tag for label in fresh.labels] == ["smollm2:135m"]
    time.sleep(0.3)
    assert directory.fresh() is None  # too old to call the backend's current list
    later = directory.provisional("starting")  # but the picker still offers it meanwhile
    assert later.provisional and [label.tag for label in later.labels] == ["smollm2:135m"]


def test_a_reply_is_costed_by_the_backends_time_less_its_model_load() -> None:
    from ui.backend_access.client import ReplyStats
    from ui.turn.reply import gpu_seconds

    ns = 1_000_000_000
    assert gpu_seconds(ReplyStats(total_duration=5 * ns, load_duration=3 * ns), 9.0) == 2.0
    assert gpu_seconds(ReplyStats(total_duration=2 * ns), 9.0) == 2.0
    assert gpu_seconds(ReplyStats(), 9.0) == 9.0  # no backend figure: the UI's measurement
