"""`leantrain.lightning.LeanTrain` in a real Lightning Trainer on CPU: fit, checkpoint, resume."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning", reason="the lightning extra: pip install 'leantrain[lightning]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lightning_example.py"


def _example():
    spec = importlib.util.spec_from_file_location("lightning_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_resumed_fit_equals_an_uninterrupted_one(tmp_path) -> None:
    example = _example()
    whole = example.main(["--epochs", "2", "--ckpt-dir", str(tmp_path / "a")])
    first = sorted((tmp_path / "a").glob("epoch=0-*.ckpt"))
    assert len(first) == 1
    saved = torch.load(first[0], weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if k.startswith("LeanTrain"))
    assert state["surgery"], "Learn&Drop should cut in the first epoch, or resuming proves little"
    assert [m["name"] for m in state["methods"]] == ["learndrop", "dcp"]

    resumed = example.main(["--epochs", "2", "--ckpt-dir", str(tmp_path / "b"),
                            "--resume", str(first[0])])
    assert resumed.net.surgery_log == whole.net.surgery_log
    assert any(e["op"] == "prune" for e in whole.net.surgery_log)  # DCP's export at the end
    want, got = whole.state_dict(), resumed.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, msg=key)


def test_other_methods_on_resume_are_refused(tmp_path) -> None:
    import lightning as L

    import leantrain
    from leantrain.lightning import LeanTrain

    example = _example()
    example.main(["--epochs", "1", "--train-subset", "256", "--ckpt-dir", str(tmp_path)])
    (ckpt,) = tmp_path.glob("*.ckpt")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[LeanTrain(leantrain.DCP(), module="net")])
    with pytest.raises(ValueError) as err:
        trainer.fit(example.Classifier(), example.batches(256), ckpt_path=str(ckpt))
    assert str(err.value) == (
        "this checkpoint was trained with methods ['learndrop', 'dcp'] but LeanTrain has "
        "['dcp']; resume with the same methods."
    )


def test_make_test_installs_the_lightning_extra(tmp_path) -> None:
    import subprocess
    import tomllib

    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "-B", "test", f"VENV={tmp_path / 'venv'}"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    assert 'pip install -q -e ".[lightning]"' in plan
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["lightning"] == ["lightning>=2.4"]


def test_the_example_runs_as_a_script_in_the_project_environment(tmp_path) -> None:
    """`make test` installs tests/torchvision_stub.py's import hook into .venv, so the example
    runs as a user starts it, without the tests' stub (Lightning imports torchvision)."""
    import subprocess
    import sys
    import sysconfig

    root = Path(__file__).resolve().parents[1]
    plan = subprocess.run(["make", "-n", "-B", "test", f"VENV={tmp_path / 'venv'}"], cwd=root,
                          capture_output=True, text=True, check=True).stdout
    assert "tests/torchvision_stub.py --install" in plan
    if not (Path(sysconfig.get_paths()["purelib"]) / "_leantrain_torchvision_stub.pth").is_file():
        pytest.skip("this environment was not made by `make test`")
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--epochs", "1", "--ckpt-dir", str(tmp_path / "ckpts")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "ckpts").glob("epoch=0-*.ckpt"))


def test_two_optimizers_are_refused() -> None:
    import lightning as L

    import leantrain
    from leantrain.lightning import LeanTrain

    example = _example()

    class TwoOptimizers(example.Classifier):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, index):
            return None

        def configure_optimizers(self):
            half = len(list(self.parameters())) // 2
            params = list(self.parameters())
            return [torch.optim.SGD(params[:half], lr=0.1), torch.optim.SGD(params[half:], lr=0.1)]

    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[LeanTrain(leantrain.DCP(), module="net")])
    with pytest.raises(ValueError) as err:
        trainer.fit(TwoOptimizers(), example.batches(128))
    assert str(err.value) == (
        "LeanTrain needs exactly one optimizer, but configure_optimizers returned 2; return one "
        "optimizer."
    )
