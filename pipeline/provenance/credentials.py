"""C2PA manifests through ``c2pa-python``: the active manifest's claims and its validation state.

Validation is the library's: ``Trusted`` (signature and content hashes valid, the signer's chain ends at one
of the trust anchors given, which replace the library's own), ``Valid`` (the same, but the certificate
reaches no anchor: ``untrusted``), ``Invalid`` (a signature or a hash does not match). Only the claims of a
trusted manifest are verified. Nothing is fetched: not a remote manifest, not an OCSP answer.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.provenance.evidence import (
    CredentialState,
    Finding,
    FindingKind,
    ProvenanceClass,
    indicates_of,
    source_type_term,
)

logger = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _c2pa_context(trust_anchors_pem: str | None, pid: int) -> Any:
    """One c2pa Context per trust configuration and process (native state must not cross a fork)."""
    import c2pa

    settings: dict[str, Any] = {
        # no network: a remote manifest or an OCSP responder is a request to wherever the file says
        "verify": {"remote_manifest_fetch": False, "ocsp_fetch": False, "verify_trust": True},
    }
    if trust_anchors_pem:
        settings["trust"] = {"trust_anchors": trust_anchors_pem}  # replaces the library's own anchors
    return c2pa.Context.from_dict(settings)


def read_c2pa(
    source: bytes | Path, *, trust_anchors_pem: str | None = None
) -> tuple[CredentialState, list[Finding]]:
    """The credential state and the active manifest's findings; ``(ABSENT, [])`` without a manifest."""
    import c2pa

    try:
        context = _c2pa_context(trust_anchors_pem, os.getpid())
        if isinstance(source, bytes):
            store = _read_store(io.BytesIO(source), context)
        else:
            with Path(source).open("rb") as stream:
                store = _read_store(stream, context)
    except c2pa.C2paError as e:
        return _c2pa_failure(e)
    except OSError as e:  # the media decoder will say so too; there is no evidence here
        logger.debug("no C2PA read of %s: %s", source if isinstance(source, Path) else "bytes", e)
        return CredentialState.ABSENT, []
    if store is None:
        return CredentialState.ABSENT, []
    return _manifest_findings(store)


def _read_store(stream: Any, context: Any) -> dict[str, Any] | None:
    """The manifest store as the library's JSON, or None when the asset carries none."""
    import c2pa

    reader = c2pa.Reader.try_create(stream, context=context)
    if reader is None:
        return None
    with reader:
        return dict(json.loads(reader.json()))


def _c2pa_failure(error: Exception) -> tuple[CredentialState, list[Finding]]:
    import c2pa

    message = str(error)
    # No credentials: a format C2PA has no place in, or an asset its parser rejects (the media decoder
    # reports that one). The library raises the latter as Other, so its message tells them apart.
    if isinstance(error, c2pa.C2paError.NotSupported | c2pa.C2paError.ManifestNotFound) or (
        isinstance(error, c2pa.C2paError.Other) and "could not be parsed" in message
    ):
        return CredentialState.ABSENT, []
    # "Remote: must fetch remote manifests from url URL" (an untyped C2paError in 0.38)
    if isinstance(error, c2pa.C2paError.RemoteManifest) or message.startswith("Remote"):
        url = message.rsplit(" ", 1)[-1]
        finding = Finding(FindingKind.C2PA_MANIFEST, "remote", detail=f"not fetched: {url}")
        return CredentialState.REMOTE, [finding]
    return CredentialState.UNREADABLE, [Finding(FindingKind.C2PA_MANIFEST, "unreadable", detail=message)]


def _credential_state(store: Mapping[str, Any]) -> tuple[CredentialState, list[str]]:
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [str(s.get("code")) for s in results.get("failure", []) if s.get("code")]
    state = store.get("validation_state")
    if state == "Trusted":
        return CredentialState.TRUSTED, failures
    if state == "Valid":  # signature and hashes hold; the certificate did not reach an anchor
        return CredentialState.UNTRUSTED, failures
    if state == "Invalid":
        return CredentialState.INVALID, failures
    # no state (older stores): any failure but trust makes it invalid
    codes = [str(s.get("code")) for s in store.get("validation_status") or []]
    broken = [c for c in codes if not c.startswith("signingCredential.untrusted")]
    return (CredentialState.INVALID if broken else CredentialState.UNTRUSTED), codes


def _manifest_findings(store: Mapping[str, Any]) -> tuple[CredentialState, list[Finding]]:
    credentials, failures = _credential_state(store)
    manifest = (store.get("manifests") or {}).get(store.get("active_manifest") or "") or {}
    trusted = credentials == CredentialState.TRUSTED
    signature = manifest.get("signature_info") or {}
    signer = ", ".join(str(signature[k]) for k in ("common_name", "issuer") if signature.get(k))
    detail = "; ".join(
        part for part in (f"signed by {signer}" if signer else "", ", ".join(failures)) if part
    )
    findings = [
        Finding(FindingKind.C2PA_MANIFEST, credentials.value, verified=trusted, detail=detail or None)
    ]
    generator = _claim_generator(manifest)
    if generator:
        findings.append(Finding(FindingKind.C2PA_CLAIM_GENERATOR, generator, verified=trusted))
    for action in _actions(manifest):
        name = str(action.get("action", "?"))
        agent = _agent_name(action.get("softwareAgent"))
        findings.append(Finding(FindingKind.C2PA_ACTION, name, verified=trusted, detail=agent))
        term = source_type_term(action.get("digitalSourceType"))
        if term:
            indicates = indicates_of(term)
            # A claim of capture in a manifest that no longer matches its file is what an edit of a signed
            # photo leaves behind: reported, but it points nowhere. A claim of generation still does.
            if credentials == CredentialState.INVALID and indicates == ProvenanceClass.CAMERA:
                indicates = ProvenanceClass.NONE
            where = f"{name} by {agent}" if agent else name
            findings.append(Finding(FindingKind.C2PA_SOURCE_TYPE, term, trusted, indicates, where))
    return credentials, findings


def _claim_generator(manifest: Mapping[str, Any]) -> str:
    info = manifest.get("claim_generator_info")
    if isinstance(info, list) and info and isinstance(info[0], Mapping):
        return " ".join(str(info[0][k]) for k in ("name", "version") if info[0].get(k))
    return str(manifest.get("claim_generator") or "")


def _actions(manifest: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for assertion in manifest.get("assertions") or []:
        if str(assertion.get("label", "")).startswith("c2pa.actions"):
            for action in (assertion.get("data") or {}).get("actions") or []:
                if isinstance(action, Mapping):
                    yield action


def _agent_name(agent: Any) -> str | None:
    if isinstance(agent, Mapping):
        return " ".join(str(agent[k]) for k in ("name", "version") if agent.get(k)) or None
    return str(agent) if agent else None
