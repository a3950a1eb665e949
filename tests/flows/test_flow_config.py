"""FlowConfig (flows/config.py): validation and the stage -> work pool mapping."""

from __future__ import annotations

import pytest

from d1.config import from_dict
from d1.errors import ConfigError
from flows.config import FlowConfig


def test_defaults_put_every_stage_on_the_default_pool():
    cfg = FlowConfig()
    assert cfg.pool_for("prepare") == "cpu"
    assert cfg.pool_for("grpo@d1-countdown") == "cpu"


def test_prefix_matches_generated_stages_and_longest_key_wins():
    cfg = FlowConfig(default_pool="cpu", pools={"grpo": "gpu", "grpo@d1-sudoku": "cpu", "eval": "gpu"})
    assert cfg.pool_for("grpo") == "gpu"
    assert cfg.pool_for("grpo@d1-countdown") == "gpu"
    assert cfg.pool_for("grpo@d1-sudoku") == "cpu"
    assert cfg.pool_for("eval@d1-countdown-64") == "gpu"
    assert cfg.pool_for("grpox") == "cpu"  # a prefix is a whole stage name, not any string prefix
    assert cfg.pool_for("report") == "cpu"


@pytest.mark.parametrize("data, message", [
    ({"default_pool": "bad pool"}, "flow.default_pool: 'bad pool'"),
    ({"pools": {"sft": "g p u"}}, "flow.pools.sft: 'g p u'"),
    ({"retries": -1}, "flow.retries: must be >= 0, got -1"),
    ({"tasks_param": "tiny..tasks"}, "flow.tasks_param: 'tiny..tasks'"),
    ({"stage_timeout_seconds": 0}, "flow.stage_timeout_seconds: must be positive"),
    ({"asset_namespace": "a b"}, "flow.asset_namespace: 'a b'"),
    ({"poolz": {}}, "flow: unknown key 'poolz'"),
])
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict(FlowConfig, data, "flow")
    assert message in str(err.value)


def test_a_pools_key_matching_no_stage_is_an_error():
    cfg = FlowConfig(pools={"sft": "gpu", "grop": "gpu"})
    with pytest.raises(ConfigError, match="flow.pools: 'grop' matches no stage"):
        cfg.check_stages(["prepare", "sft", "grpo@d1-countdown"])
    FlowConfig(pools={"grpo": "gpu"}).check_stages(["prepare", "grpo@d1-countdown"])  # no error
