import dataclasses
import json
from typing import Literal, Optional

import pytest

from jaxllm.config import ConfigError, from_dict, function_ref, override, resolve_function, to_dict, to_json
from jaxllm.recipes.experiment import Config, load_experiment, open_run, start_run


@dataclasses.dataclass(frozen=True)
class Inner:
    lr: float = 1e-3
    steps: int = 10
    kind: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ("x",)
    maybe: Optional[int] = None
    flag: bool = False
    pair: tuple[float, int] = (0.5, 2)


@dataclasses.dataclass(frozen=True)
class Outer:
    inner: Inner = Inner()
    loss: str = "jaxllm.model.loss:cross_entropy_loss"


def test_override_types_and_nesting():
    cfg = override(Outer(), ["inner.lr=3e-4", "inner.steps=20", "inner.kind=b", "inner.names=p,q",
                             "inner.maybe=5", "inner.flag=true"])
    assert cfg.inner == Inner(lr=3e-4, steps=20, kind="b", names=("p", "q"), maybe=5, flag=True)
    assert override(cfg, ["inner.maybe=none"]).inner.maybe is None


@pytest.mark.parametrize("assignment, message", [
    ("inner.lrr=1", "did you mean 'lr'"),
    ("iner.lr=1", "did you mean 'inner'"),
    ("inner.steps=ten", "expected an integer"),
    ("inner.kind=c", "not one of"),
    ("inner.flag=maybe", "expected true/false"),
    ("inner.lr", "must look like"),
])
def test_override_errors_name_the_key_and_fix(assignment, message):
    with pytest.raises(ConfigError, match=message):
        override(Outer(), [assignment])


def test_json_round_trip_and_unknown_keys():
    cfg = override(Outer(), ["inner.names=a,b", "inner.maybe=3", "inner.pair=0.25,3"])
    assert cfg.inner.pair == (0.25, 3)
    again = from_dict(Outer, json.loads(to_json(cfg)))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown config key 'inner.stepz'"):
        from_dict(Outer, {"inner": {"stepz": 3}})


def test_function_references_round_trip():
    fn = resolve_function(Outer().loss)
    assert function_ref(fn) == Outer().loss
    with pytest.raises(ConfigError, match="no attribute"):
        resolve_function("jaxllm.model.loss:nope")
    with pytest.raises(ConfigError, match="must look like"):
        resolve_function("no_colon")


def test_experiment_file_run_dir_and_config_json(tmp_path):
    cfg = load_experiment("speedrun", ("train.steps=7",))
    assert isinstance(cfg, Config) and cfg.train.steps == 7
    assert load_experiment("speedrun", (), depth=3).model.n_layers == 3
    run_dir = start_run(dataclasses.replace(cfg, runs_dir=str(tmp_path)))
    assert run_dir.parent == tmp_path and run_dir.name.startswith("speedrun-")
    reopened, _ = open_run(run_dir)
    assert to_dict(reopened) == to_dict(dataclasses.replace(cfg, runs_dir=str(tmp_path)))
    fresh = load_experiment(str(run_dir / "config.json"))
    assert fresh == reopened
    with pytest.raises(ConfigError, match="already holds a run"):
        start_run(cfg, run_dir)
    with pytest.raises(ConfigError, match="no experiment named 'nope'"):
        load_experiment("nope")


def test_cli_reports_bad_key_in_one_line(capsys):
    from jaxllm.cli import main

    code = main(["run", "speedrun", "--set", "optim.lrr=1", "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "did you mean 'lr'" in err[0]
