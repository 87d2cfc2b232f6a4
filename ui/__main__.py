"""`python -m ui`: serve the chat UI on 0.0.0.0:$PORT (default 7860)."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from ui.app import build_app, launch
from ui.backend_access.embedded import EngineStartError, resolve_backend
from ui.settings import Settings

logger = logging.getLogger("ui")


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Cloud Run (and `kill`) send SIGTERM; turn it into a normal exit so that `finally`
    # blocks run and the embedded engine is stopped.
    raise SystemExit(0)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # httpx logs every request at INFO: one line per chat and probe is noise here.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    settings = Settings()
    try:
        settings, engine = resolve_backend(settings)
    except EngineStartError as exc:
        logger.error("%s", exc)
        return 1
    try:
        demo = build_app(settings)
        logger.info("Serving the UI on http://%s:%d", settings.host, settings.port)
        launch(demo, settings)
    except KeyboardInterrupt:
        pass
    finally:
        if engine is not None:
            engine.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
