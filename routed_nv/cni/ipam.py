"""Delegation to the IPAM plugin (SPEC.md section 4): its executable from CNI_PATH, run with
the same environment and the whole network config on stdin, its stderr passed through."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

from routed_nv.cni.spec import DECODE_FAILURE, INVALID_CONFIG, CniError, Request

Json = dict[str, Any]
# Debian 12's containernetworking-plugins (1.1.1) speak at most 1.0.0; a 1.1.0 config is handed
# on as 1.0.0 (the IPAM result has the same shape), STATUS and GC only to an IPAM that has them.
IPAM_1_0 = "1.0.0"


def run(
    req: Request,
    command: str,
    config: Json | None = None,
    env: dict[str, str] | None = None,
) -> Json | None:
    """The IPAM plugin's result (None when it printed nothing); CniError with its code."""
    ipam_type = req.config["ipam"]["type"]
    binary = find(req, ipam_type)
    conf = dict(config if config is not None else req.config)
    if command in ("ADD", "DEL", "CHECK") and conf.get("cniVersion") == "1.1.0":
        conf["cniVersion"] = IPAM_1_0
        if isinstance(conf.get("prevResult"), dict):
            conf["prevResult"] = {**conf["prevResult"], "cniVersion": IPAM_1_0}
    done = subprocess.run(
        [binary],
        input=json.dumps(conf).encode(),
        env={**(env if env is not None else os.environ), "CNI_COMMAND": command},
        stdout=subprocess.PIPE,
        check=False,
        timeout=req.timeout,
    )
    out = done.stdout.strip()
    answer = _decode(out, ipam_type) if out else None
    if done.returncode != 0:
        where = f"IPAM {ipam_type} {command}"
        if isinstance(answer, dict) and isinstance(answer.get("code"), int):
            details = str(answer.get("details", ""))
            raise CniError(answer["code"], f"{where}: {answer.get('msg', '')}", details)
        raise CniError(INVALID_CONFIG, f"{where} failed (exit {done.returncode})")
    return answer


def supports(req: Request, version: str) -> bool:
    """The IPAM plugin's VERSION lists `version` (asked before forwarding STATUS or GC)."""
    binary = find(req, req.config["ipam"]["type"])
    done = subprocess.run(
        [binary],
        input=json.dumps({"cniVersion": IPAM_1_0}).encode(),
        env={**os.environ, "CNI_COMMAND": "VERSION"},
        stdout=subprocess.PIPE,
        check=False,
        timeout=req.timeout,
    )
    try:
        return version in json.loads(done.stdout).get("supportedVersions", [])
    except (ValueError, AttributeError):
        return False


def find(req: Request, name: str) -> str:
    for directory in req.cni_path:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    raise CniError(
        INVALID_CONFIG,
        f"IPAM plugin {name!r} not found in CNI_PATH {os.pathsep.join(req.cni_path)!r}",
    )


def _decode(out: bytes, ipam_type: str) -> Json:
    try:
        answer = json.loads(out)
    except ValueError:
        raise CniError(DECODE_FAILURE, f"IPAM {ipam_type} printed no JSON: {out[:200]!r}") from None
    if not isinstance(answer, dict):
        raise CniError(DECODE_FAILURE, f"IPAM {ipam_type} printed no JSON object")
    return answer
