"""The saddle-chain experiment (Jacot et al. Conjecture 3; SPEC §8): a quick preset runs into a
run folder with its checks passing, and `saddlejax chain` refuses bad options with
one line naming the option, before any computation."""

import json

import pytest
from _cli_run import run_cli

import saddlejax.experiments as ex
from saddlejax.experiments._saddle_chain import SaddleChainConfig


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--problem", "resnet"], ["--problem", "resnet"]),
        (["--alphas", "2"], ["--alphas", "2.0", "(1e-10, 1)"]),
        (["--alphas", "1e-300"], ["--alphas", "1e-300", "out of reach"]),
        (["--alphas", "0.01", "0.01"], ["--alphas", "twice"]),
        (["--alphas", "x"], ["--alphas", "'x'"]),
        (["--seed", "-1"], ["--seed", "-1"]),
        (["--max-saddles", "0"], ["--max-saddles", "0"]),
        (["--max-branches", "-1"], ["--max-branches", "-1"]),
        (["--out", ""], ["--out", "empty"]),
    ],
)
def test_cli_refuses_bad_options(argv, words, tmp_path, monkeypatch):
    """A bad value exits with status 2 and one stderr line naming the option, no traceback."""
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["chain", *argv])
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saddlejax chain: error: "), err
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_cli_help():
    code, out, _ = run_cli(["chain", "--help"])
    assert code == 0
    for word in ("--problem", "jacot-fig1", "deep-relu", "two-layer-tanh", "--alphas", "--quick"):
        assert word in out


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="`problem`"):
        SaddleChainConfig(problem="resnet")
    with pytest.raises(ValueError, match="`alphas`"):
        SaddleChainConfig(alphas=())
    # k = 2 at a tanh net's origin: plateaus of log(1/α), so α down to 1e-60; elsewhere 1e-10.
    assert SaddleChainConfig(problem="two-layer-tanh", alphas=(1e-24,)).alphas == (1e-24,)
    with pytest.raises(ValueError, match="`alphas`.*1e-60"):
        SaddleChainConfig(problem="two-layer-tanh", alphas=(1e-100,))
    with pytest.raises(ValueError, match="`alphas`.*1e-10"):
        SaddleChainConfig(problem="deep-relu", alphas=(1e-24,))


def test_quick_preset_writes_a_run_folder(tmp_path):
    """The quick chain-two-layer-tanh run (the cheapest preset; the notebook runs all three):
    its checks pass (plateau level and drop time against the flows at α = 1e−6, 1e−12, and the
    rate at which the drop-time error falls against the chain's α^(e·gap)) and the
    run folder holds the resolved config, the summary with the chain and the figure."""
    (job,) = ex.configure("chain-two-layer-tanh", quick=True)
    record = ex.execute(job, tmp_path, progress=False)
    outcome = record.outcome
    assert not outcome.failures, outcome.failures
    assert outcome.passed, ex.checks_table(outcome.checks)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["kind"] for s in summary["values"]["saddles"]] == ["saddle", "loss_floor"]
    assert summary["values"]["saddles"][0]["order"] == 2
    assert summary["values"]["saddles"][0]["gap"] == pytest.approx(0.233, abs=1e-3)
    assert len(summary["values"]["approach_rate"]["measured"]) == 1
    assert (tmp_path / "config.yaml").is_file()
    if ex.has_matplotlib():
        assert (tmp_path / "saddle_chain.png").is_file()
