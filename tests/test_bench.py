"""benchmarks/bench.py: the harness runs end to end at tiny sizes and writes every measurement.
The full run takes minutes and is not part of CI; this keeps it working."""
import importlib.util
import json
import sys

import pytest

from conftest import ROOT, run_script

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def smoke(faces_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("bench") / "results.json"
    result = run_script("benchmarks/bench.py", "--batches", "2", "--steps", "1", "--gen-batch", "2",
                        "--gen-repeats", "1", "--matmul-sizes", "64", "--matmul-repeats", "1",
                        "--data", faces_dir, "--reader-batch", "4", "--json", output, timeout=300)
    return json.loads(output.read_text()), result.stdout


@pytest.mark.slow
def test_the_table_and_the_json_hold_all_six_measurements(smoke):
    results, stdout = smoke
    training = results["training"]["2"]
    assert training["paddle_images_per_second"] > 0 and len(training["paddle_losses"]) == 3
    assert results["generation"]["paddle_dygraph"]["images_per_second"] > 0
    assert results["generation"]["paddle_run_py"]["images_per_second"] > 0
    assert results["reader"]["images"] == 12 and results["reader"]["loader_images_per_second"] > 0
    assert results["flops"]["generator_forward_gflop"] == pytest.approx(0.434, abs=0.001)
    assert results["flops"]["discriminator_forward_gflop"] == pytest.approx(0.467, abs=0.001)
    assert results["flops"]["training_gflop_per_real_image"] == pytest.approx(7.71, abs=0.01)
    assert results["flops"]["best_matmul_gflops"] > 0
    assert 0 < results["run_cold_start_seconds"]["first_run"] < 120
    assert results["threads"] == 2
    for label in ("training, batch 2", "generation, dynamic graph", "Run.py path", "best single matmul",
                  "Reader.py loader", "Run.py cold start"):
        assert label in stdout


@pytest.mark.skipif(HAS_TORCH, reason="torch is installed here: the PyTorch columns are filled")
def test_without_torch_the_pytorch_columns_say_not_installed(smoke):
    results, stdout = smoke
    assert results["torch"] == "not installed"
    assert results["training"]["2"]["torch_images_per_second"] is None
    assert "not installed" in stdout


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -r benchmarks/requirements.txt)")
def test_with_torch_both_frameworks_are_timed_and_compared(smoke):
    results = smoke[0]
    training = results["training"]["2"]
    assert training["torch_images_per_second"] > 0 and training["ratio"] > 0
    assert results["generation"]["torch"]["images_per_second"] > 0


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed (pip install -r benchmarks/requirements.txt)")
def test_the_pytorch_port_trains_as_many_weights_as_the_paddle_networks():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import torch_dcgan
    from Net import Discriminator, Generator

    pairs = ((Generator(), torch_dcgan.Generator()), (Discriminator(), torch_dcgan.Discriminator()))
    for paddle_net, torch_net in pairs:
        # Paddle lists BatchNorm's running statistics among the parameters, frozen; PyTorch as buffers.
        paddle_count = sum(int(p.size) for p in paddle_net.parameters() if not p.stop_gradient)
        torch_count = sum(p.numel() for p in torch_net.parameters())
        assert paddle_count == torch_count
