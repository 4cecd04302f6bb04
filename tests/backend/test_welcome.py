"""What a backend's welcome announces is what the spec's tables and the pipeline say: every key of
`welcome.limits` is in the spec's limits table, and `welcome.stage_chains` is the pipeline's."""

from __future__ import annotations

import re

from dreampolish.protocol.client import BackendClient

from tests.support import spec_tables
from tests.support.pipelines import ScriptedPipeline, running_backend


def test_welcome_announces_the_spec_tables_limits_and_the_pipelines_stage_chains(tmp_path):
    table = spec_tables.page_table(spec_tables.PAGE.read_text(), "limits")
    documented = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    with running_backend(tmp_path) as server, BackendClient(server.endpoint, timeout_s=5) as client:
        welcome = client.connect()
    assert set(welcome.limits) == documented
    assert welcome.stage_chains == ScriptedPipeline().stage_chains()
    assert welcome.stage_chains["geometry"] == ["dmtet", "polish", "finish", "texture"]


def test_a_welcome_from_a_1_0_backend_reads_as_one_that_lists_no_stages():
    import msgpack
    from dreampolish.protocol import codec
    from dreampolish.protocol import messages as m

    frames = [bytes(f) for f in codec.encode(m.Welcome(presets=["tiny"], stage_chains={"generate": ["nerf"]}))]
    header = msgpack.unpackb(frames[0], raw=False)
    del header["body"]["stage_chains"]
    header["v"] = "1.0"
    welcome = codec.decode([msgpack.packb(header, use_bin_type=True)])
    assert isinstance(welcome, m.Welcome) and welcome.stage_chains == {} and welcome.presets == ["tiny"]


def test_a_welcome_carries_each_preset_s_memory_and_one_from_a_1_1_backend_reads_as_none():
    import msgpack
    from dreampolish.protocol import codec
    from dreampolish.protocol import messages as m

    sent = m.Welcome(presets=["draft", "tiny"], preset_memory_gb={"draft": 11.4})
    frames = [bytes(f) for f in codec.encode(sent)]
    assert codec.decode(frames).preset_memory_gb == {"draft": 11.4}
    header = msgpack.unpackb(frames[0], raw=False)
    header["body"]["preset_memory_gb"] = {"draft": "a lot", "tiny": True, "high": 30}  # only numbers are read
    assert codec.decode([msgpack.packb(header, use_bin_type=True)]).preset_memory_gb == {"high": 30.0}
    del header["body"]["preset_memory_gb"]
    header["v"] = "1.1"
    assert codec.decode([msgpack.packb(header, use_bin_type=True)]).preset_memory_gb == {}
