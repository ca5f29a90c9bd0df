"""Remote OpenAI-compatible servers, by name: ``openai`` (OpenAI's API, or ``--api-base``) and the endpoints saved
in the data home (`tui-chat endpoints add NAME URL`). A model spec ``NAME:MODEL`` is MODEL served there.

The file (``endpoints.json``, 0600) holds names, URLs and where each key comes from: an environment variable or a
0600 file. Keys themselves are read when a request is made and never written anywhere by the app.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from tui_chat.inference.contract import EngineError
from tui_chat.inference.openai_engine import OpenAIEngine

ENDPOINTS_FILE = "endpoints.json"
OPENAI_URL = "https://api.openai.com/v1"
LISTING_TIMEOUT_S = 3.0  # the model picker asks every endpoint for its models; a dead one must not hold it up


@dataclass(frozen=True)
class Endpoint:
    name: str
    url: str
    key_env: str | None = None  # the environment variable holding the key
    key_file: str | None = None  # or a file holding it (0600 or stricter)

    def api_key(self) -> str | None:
        """The key, read now; None when the endpoint needs none. A key file others can read is refused."""
        if self.key_env:
            key = os.environ.get(self.key_env)
            if not key:
                raise EngineError(f"endpoint {self.name} takes its key from ${self.key_env}, which is not set; "
                                  f"export {self.key_env}=... first")
            return key
        if self.key_file:
            path = Path(self.key_file).expanduser()
            try:
                mode = path.stat().st_mode
            except OSError as exc:
                raise EngineError(f"endpoint {self.name}'s key file {path} cannot be read ({exc.strerror})") from None
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise EngineError(f"endpoint {self.name}'s key file {path} is readable by others; chmod 600 {path}")
            return path.read_text().strip() or None
        return None


def endpoints_path(home_root: Path) -> Path:
    return home_root / ENDPOINTS_FILE


def load_endpoints(home_root: Path) -> dict[str, Endpoint]:
    path = endpoints_path(home_root)
    if not path.exists():
        return {}
    try:
        saved = json.loads(path.read_text())
        return {name: Endpoint(name=name, **fields) for name, fields in saved.items()}
    except (ValueError, TypeError, AttributeError) as exc:
        raise EngineError(f"{path} is not an endpoints file ({exc}); fix or delete it") from None


def save_endpoints(home_root: Path, endpoints: dict[str, Endpoint]) -> None:
    path = endpoints_path(home_root)
    saved = {name: {k: v for k, v in asdict(e).items() if k != "name" and v is not None}
             for name, e in sorted(endpoints.items())}
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps(saved, indent=2) + "\n")


def endpoint_for(prefix: str, home_root: Path, api_base: str | None = None) -> Endpoint | None:
    """The endpoint a spec prefix names: ``openai`` (with ``api_base`` when given) or a saved one."""
    if prefix == "openai":
        return Endpoint("openai", api_base or OPENAI_URL, key_env="OPENAI_API_KEY" if not api_base else None)
    return load_endpoints(home_root).get(prefix)


def remote_engine(spec: str, home_root: Path, api_base: str | None = None) -> OpenAIEngine | None:
    """The engine for ``ENDPOINT:MODEL``; None for a spec that names no endpoint (a local model)."""
    prefix, colon, model = spec.partition(":")
    if not colon or not model:
        return None
    endpoint = endpoint_for(prefix, home_root, api_base)
    if endpoint is None:
        return None
    # Another server with --api-base may need no key; the openai client's variable is sent when it is set.
    key = os.environ.get("OPENAI_API_KEY") if prefix == "openai" and api_base else endpoint.api_key()
    return OpenAIEngine(spec, model, endpoint.url, api_key=key)


def remote_models(home_root: Path) -> list[tuple[str, str]]:
    """``(spec, description)`` for every model the saved endpoints serve (their GET /models), for the model picker.
    An endpoint that does not answer within LISTING_TIMEOUT_S lists nothing (its models can still be typed in)."""
    import httpx2 as httpx

    found = []
    for endpoint in load_endpoints(home_root).values():
        try:
            key = endpoint.api_key()
            response = httpx.get(endpoint.url.rstrip("/") + "/models", timeout=LISTING_TIMEOUT_S,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
            response.raise_for_status()
            models = [model["id"] for model in response.json().get("data", []) if isinstance(model, dict)]
        except (EngineError, httpx.HTTPError, ValueError, KeyError, AttributeError):
            continue
        found.extend((f"{endpoint.name}:{model}", f"served by {endpoint.name} ({endpoint.url})") for model in models)
    return found
