import pytest
import torch

from kd_lightning.cli import main
from kd_lightning.export import DEFAULT_ATOL, export_network
from kd_lightning.loading import evaluation_batches, load_datamodule, load_network
from kd_lightning.models import CheckpointError
from tests._extras import require_extra
from tests._pipeline_helpers import digits_checkpoints

require_extra("export")
import onnx  # noqa: E402  (after the check: without the extra the module is skipped, not an import error)
import onnxruntime  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return digits_checkpoints(tmp_path_factory.mktemp("digits"))


def test_load_network_is_the_student_alone(checkpoints):
    _, student = checkpoints
    network = load_network(student)
    assert not network.training
    names = {name for name, _ in network.named_parameters()}
    assert names and not any(n.startswith(("teacher", "loss_terms")) for n in names)
    state = torch.load(student, weights_only=True)["state_dict"]
    assert torch.equal(network.head.weight, state["network.head.weight"])


def test_export_cli_checks_parity_on_a_real_batch(checkpoints, tmp_path, capsys):
    _, student = checkpoints
    main(["export", str(student), "--data", "digits", "--output", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "onnx" in printed and "torchscript" in printed and "max |diff|" in printed
    model = onnx.load(tmp_path / "student.onnx")
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["images"]  # the student only: one image input
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 8, 8]  # free batch, the trained input
    images, _ = evaluation_batches(load_datamodule("digits"))[1]  # another batch than the check's
    with torch.no_grad():
        reference = load_network(student)(images)
        assert torch.allclose(torch.jit.load(tmp_path / "student.pt")(images), reference, atol=DEFAULT_ATOL)
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": images[:3].numpy()})  # exported from a batch of 1: batch is dynamic
    assert torch.allclose(torch.from_numpy(logits), reference[:3], atol=DEFAULT_ATOL)


def test_export_network_reports_parity(checkpoints, tmp_path):
    _, student = checkpoints
    images, _ = evaluation_batches(load_datamodule("digits"))[0]
    (result,) = export_network(load_network(student), images, tmp_path, "student", formats=("torchscript",))
    assert result.format == "torchscript" and result.ok
    assert 0.0 <= result.max_abs_diff < DEFAULT_ATOL
    with pytest.raises(ValueError, match="unknown export formats"):
        export_network(load_network(student), images, tmp_path, formats=("tflite",))


def test_export_fails_loudly_beyond_tolerance(checkpoints, tmp_path):
    _, student = checkpoints
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(student), "--output", str(tmp_path), "--formats", "torchscript", "--atol", "-1"])
    assert exit_info.value.code == 1


def test_data_from_a_config_file_or_a_name(tmp_path):
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "digits" / "finetune.yaml"
    assert load_datamodule(config).samples_per_class == 20
    assert type(load_datamodule("digits")) is type(load_datamodule(config))
    with pytest.raises(ValueError, match="unknown data set"):
        load_datamodule("imagenet")


def test_export_refuses_a_plain_state_dict(tmp_path):
    torch.save({"weight": torch.zeros(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a (kd_lightning )?Lightning checkpoint"):
        load_network(tmp_path / "plain.pt")
