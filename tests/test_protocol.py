"""The broker protocol's constants agree between C (helper/protocol.h) and
Python (cgnetns/broker.py), and the request the Python side encodes is the one
the C client sends (no root needed)."""

import os
import re

import pytest

from cgnetns import broker

pytestmark = pytest.mark.unit

HEADER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "helper", "protocol.h")


def c_constants():
    with open(HEADER) as f:
        text = f.read()
    found = dict(re.findall(r"^#define[ \t]+(\w+)[ \t]+(\S+)", text, re.M))
    return {k: (v.strip('"') if v.startswith('"') else int(v)) for k, v in found.items()
            if not k.endswith("_H")}


def test_c_and_python_agree():
    c = c_constants()
    assert c["CGNETNS_BROKER_MAGIC"].encode() == broker.MAGIC
    assert c["BROKER_HEADER_SIZE"] == broker.HEADER.size
    assert c["BROKER_NAME_MAX"] == broker.NAME_MAX
    assert c["BROKER_HANDSHAKE_SECONDS"] == broker.HANDSHAKE_SECONDS


def test_encoded_request_layout():
    req = broker.encode_request("distcc")
    assert req[:4] == b"CGN2" and len(req) == broker.HEADER.size + len("distcc")
    assert req[broker.HEADER.size:] == b"distcc"
