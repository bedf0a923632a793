"""Handler settings, resolved once: ``defaults.toml`` < environment, into a frozen dataclass.

As in ``wheels/options.py`` the environment comes in as a ``Mapping`` so tests never touch ``os.environ``, and a
misspelt ``WORKER_*`` variable fails at start with "Perhaps you meant ...".
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError, unknown_key

DEFAULTS = Path(__file__).with_name("defaults.toml")
MB = 1_000_000

# Every variable the handler reads. WORKER_* ones are checked for typos; the others are shared with start.sh,
# RunPod or the models package and are read as they are.
ENV_VARS: dict[str, str] = {
    "WORKER_COMFY_URL": "ComfyUI's base URL (default http://127.0.0.1:$COMFY_PORT)",
    "WORKER_READY_TIMEOUT_S": "seconds a job waits for ComfyUI to answer",
    "WORKER_REQUEST_TIMEOUT_S": "seconds for one HTTP request to ComfyUI",
    "WORKER_JOB_TIMEOUT_S": "seconds for a whole job (the cap for input.timeout_s)",
    "WORKER_WS_RECONNECTS": "websocket reconnect attempts after a drop",
    "WORKER_WS_RECONNECT_DELAY_S": "seconds between reconnect attempts",
    "WORKER_WS_POLL_S": "seconds of websocket silence before asking /history",
    "WORKER_URL_TIMEOUT_S": "seconds to download one input file given by URL",
    "WORKER_DELETE_OUTPUTS": "1/0: delete returned files from ComfyUI's output folder",
    "WORKER_MAX_INPUT_MB": "largest decoded input file, MB",
    "WORKER_MAX_TOTAL_INPUT_MB": "largest total of a job's input files, MB",
    "WORKER_MAX_RESPONSE_MB": "largest base64 job answer, MB",
    "COMFY_PORT": "ComfyUI's port (shared with start.sh)",
    "COMFY_PID_FILE": "file holding ComfyUI's pid (written by start.sh)",
    "COMFY_OUTPUT_DIR": "ComfyUI's output folder (exported by start.sh)",
    "MODELS_DEST": "the models folder (exported by start.sh), named in missing-model errors",
    "BUCKET_ENDPOINT_URL": "S3 endpoint; with the two keys below, outputs are uploaded and returned as URLs",
    "BUCKET_ACCESS_KEY_ID": "S3 access key id",
    "BUCKET_SECRET_ACCESS_KEY": "S3 secret access key",
    "BUCKET_NAME": "S3 bucket (default: RunPod's month-year name, e.g. 11-26)",
}


@dataclasses.dataclass(frozen=True)
class S3Settings:
    endpoint_url: str
    access_key_id: str
    secret_access_key: str = dataclasses.field(repr=False)
    bucket_name: str | None

    def creds(self) -> dict[str, str]:
        """The dict runpod's rp_upload takes as ``bucket_creds``."""
        return {
            "endpointUrl": self.endpoint_url,
            "accessId": self.access_key_id,
            "accessSecret": self.secret_access_key,
        }


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    comfy_url: str
    pid_file: Path | None
    ready_timeout_s: float
    request_timeout_s: float
    job_timeout_s: float
    ws_reconnects: int
    ws_reconnect_delay_s: float
    ws_poll_s: float
    url_timeout_s: float
    delete_outputs: bool
    max_input_bytes: int
    max_total_input_bytes: int
    max_response_bytes: int
    output_dir: Path | None = None
    models_dir: str | None = None
    s3: S3Settings | None = None


def _load_defaults(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"The handler's defaults file {path} is missing", fix="reinstall /opt/runtime") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    if data.get("schema") != 1:
        raise ConfigError(f"{path} has schema {data.get('schema')!r}; this handler reads schema 1")
    return data


def _number(env: Mapping[str, str], key: str, default: Any, *, integer: bool = False, positive: bool = True) -> Any:
    raw = env.get(key)
    value: Any = default if raw in (None, "") else raw
    try:
        number = int(value) if integer else float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{key}={raw!r} is not a number", fix=f"set {key} to a {'whole ' if integer else ''}number"
        ) from None
    if number < 0 or (positive and number == 0):
        raise ConfigError(f"{key}={raw!r} must be {'above' if positive else 'at least'} zero")
    return number


def _flag(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw in (None, ""):
        return default
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key}={raw!r} is not a yes/no value", fix=f"set {key} to 1 or 0")


def _s3(env: Mapping[str, str]) -> S3Settings | None:
    keys = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
    present = [k for k in keys if env.get(k)]
    if not present:
        return None
    missing = [k for k in keys if not env.get(k)]
    if missing:
        # runpod's rp_upload would silently write files to a local folder instead: refuse half a configuration.
        raise ConfigError(
            f"S3 upload is half configured: {', '.join(present)} set but {', '.join(missing)} missing",
            fix="set all three BUCKET_* variables to upload outputs, or none to return them as base64",
        )
    return S3Settings(
        endpoint_url=env["BUCKET_ENDPOINT_URL"],
        access_key_id=env["BUCKET_ACCESS_KEY_ID"],
        secret_access_key=env["BUCKET_SECRET_ACCESS_KEY"],
        bucket_name=env.get("BUCKET_NAME") or None,
    )


def check_env(env: Mapping[str, str]) -> None:
    ours = [k for k in ENV_VARS if k.startswith("WORKER_")]
    for key in env:
        if key.startswith("WORKER_") and key not in ENV_VARS:
            raise unknown_key("environment variable", key, ours, "the environment", ConfigError)


def load(env: Mapping[str, str], defaults_path: Path = DEFAULTS) -> WorkerConfig:
    check_env(env)
    data = _load_defaults(defaults_path)
    comfy, job, limits = data.get("comfy", {}), data.get("job", {}), data.get("limits", {})
    port = _number(env, "COMFY_PORT", comfy.get("port", 8188), integer=True)
    url = (env.get("WORKER_COMFY_URL") or f"http://127.0.0.1:{port}").rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"WORKER_COMFY_URL={url!r} is not an http(s) URL", fix="write it like http://127.0.0.1:8188")
    pid_file = env.get("COMFY_PID_FILE", comfy.get("pid-file", ""))
    output_dir = env.get("COMFY_OUTPUT_DIR")
    return WorkerConfig(
        comfy_url=url,
        pid_file=Path(pid_file) if pid_file else None,
        ready_timeout_s=_number(env, "WORKER_READY_TIMEOUT_S", comfy.get("ready-timeout-s", 900)),
        request_timeout_s=_number(env, "WORKER_REQUEST_TIMEOUT_S", comfy.get("request-timeout-s", 60)),
        job_timeout_s=_number(env, "WORKER_JOB_TIMEOUT_S", job.get("timeout-s", 3600)),
        ws_reconnects=_number(env, "WORKER_WS_RECONNECTS", job.get("ws-reconnects", 5), integer=True, positive=False),
        ws_reconnect_delay_s=_number(env, "WORKER_WS_RECONNECT_DELAY_S", job.get("ws-reconnect-delay-s", 2)),
        ws_poll_s=_number(env, "WORKER_WS_POLL_S", job.get("ws-poll-s", 5)),
        url_timeout_s=_number(env, "WORKER_URL_TIMEOUT_S", job.get("url-timeout-s", 120)),
        delete_outputs=_flag(env, "WORKER_DELETE_OUTPUTS", bool(job.get("delete-outputs", True))),
        max_input_bytes=int(_number(env, "WORKER_MAX_INPUT_MB", limits.get("max-input-mb", 100)) * MB),
        max_total_input_bytes=int(
            _number(env, "WORKER_MAX_TOTAL_INPUT_MB", limits.get("max-total-input-mb", 200)) * MB
        ),
        max_response_bytes=int(_number(env, "WORKER_MAX_RESPONSE_MB", limits.get("max-response-mb", 20)) * MB),
        output_dir=Path(output_dir) if output_dir else None,
        models_dir=env.get("MODELS_DEST") or None,
        s3=_s3(env),
    )
