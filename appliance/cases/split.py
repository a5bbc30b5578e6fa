"""The held-out split: which studies a site keeps out of training.

Each site keeps a fixed share of studies (``[cases] held_out_fraction``, default 0.2) out
of training: HMAC-SHA256 of the Study Instance UID under the site's key (``[cases]
split_key``, or one generated at first use and kept in the store), read as a number in
[0, 1), below the fraction means held out. All series of a study fall on the same side;
the split of a case is recorded when the case is made and never changes (changing the
fraction affects new cases only). The key is secret so that nobody can pick studies into
or out of the hold-out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from appliance.config import AppConfig
from appliance.states import CaseSplit
from appliance.store import Store

__all__ = ["SPLIT_KEY_META", "split_for", "split_key", "split_position"]

#: Where the split key lives in the store's meta table when it is not configured.
SPLIT_KEY_META: Final = "cases_split_key"


def split_key(store: Store, config: AppConfig) -> bytes:
    """The site's split key: configured, else generated once and kept in the store."""
    if config.cases.split_key:
        return config.cases.split_key.encode("utf-8")
    return store.meta_setdefault(SPLIT_KEY_META, secrets.token_hex(32)).encode("utf-8")


def split_position(study_uid: str, key: bytes) -> float:
    """The study's place in [0, 1) under the site's key (HMAC-SHA256)."""
    digest = hmac.new(key, study_uid.encode("ascii", "replace"), hashlib.sha256).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(study_uid: str, key: bytes, held_out_fraction: float) -> CaseSplit:
    if split_position(study_uid, key) < held_out_fraction:
        return CaseSplit.HELD_OUT
    return CaseSplit.TRAIN
