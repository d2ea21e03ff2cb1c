"""Write the service's OpenAPI document to openapi.json at the repository root.

Run it after changing a route or a schema: ``python scripts/export_openapi.py``.
tests/test_openapi_client.py fails while the committed file differs from what the app
serves.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OPENAPI_PATH = ROOT / "openapi.json"


def openapi_document() -> dict[str, Any]:
    """The document the app serves at /openapi.json; needs no key or database."""
    from backtest_data_module.strategy_manager.main import Settings, create_app

    # The key only satisfies Settings; nothing is started or stored.
    app = create_app(Settings(api_key="export-only"))
    return app.openapi()


def render(document: dict[str, Any]) -> str:
    """The exact text committed as openapi.json: sorted keys, indent 2."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> None:
    OPENAPI_PATH.write_text(render(openapi_document()), encoding="utf-8")
    print(f"wrote {OPENAPI_PATH}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
