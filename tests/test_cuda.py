"""The CUDA path, on a machine with a GPU (skipped elsewhere; `bash .ci/gpu OUT` runs it with the
other GPU checks): the fast paths equal the full forward on the device and the CPU's result, the
memory is scanned there in fp32, and the editors that draw at random edit as on the CPU."""

import pytest
import torch

from tests.test_hypernet import fit_modes
from tests.test_suffix import KEY_BIAS
from tests.test_suffix import _run as suffix_run
from tests.test_tpatcher import forced_edits

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("layer", [-1, 0])
def test_tpatcher_fast_equals_naive_on_cuda_and_cpu(family, layer):
    fast, naive, cpu = (forced_edits(family, mode, layer, device) for mode, device in
                        (("fast", "cuda"), ("naive", "cuda"), ("fast", "cpu")))
    for other in (naive, cpu):
        assert fast[2] == other[2]
        # TF32 and other kernels on the GPU: within what 25 Adam steps amplify of rounding
        assert torch.allclose(fast[0], other[0], atol=1e-3) and torch.allclose(fast[1], other[1], atol=1e-3)


@pytest.mark.parametrize("row", ["ft_last", "ft_kl_last", "constrained_ft-last"])
def test_suffix_path_equals_full_forward_on_cuda(family, row):
    fast_steps, fast, fast_logits = suffix_run(family, row, "fast", "cuda")
    naive_steps, naive, naive_logits = suffix_run(family, row, "naive", "cuda")
    assert fast_steps == naive_steps and fast_steps[0] > 0
    for name in fast:
        if not name.endswith(KEY_BIAS):
            assert torch.allclose(fast[name], naive[name], atol=1e-3), name
    assert torch.allclose(fast_logits, naive_logits, atol=1e-3)


def test_memory_on_cuda_scans_in_fp32_with_the_cpu_top_entries():
    from editors.patch_memory import QueryMemory

    generator = torch.Generator().manual_seed(0)
    rows, keys = torch.randn(5000, 48, generator=generator), torch.randn(48, 2, generator=generator)
    cpu = QueryMemory(48)
    cpu.append(rows)
    gpu = QueryMemory(48, quantized=True, transposed=True).to("cuda")  # T-Patcher's memory
    gpu.append(rows.cuda())
    assert not gpu.quantized  # the int8 kernel is CPU's
    (want,) = cpu.top_entries(keys, torch.zeros(2), [torch.zeros(2)], 64)
    (got,) = gpu.top_entries(keys.cuda(), torch.zeros(2, device="cuda"), [torch.zeros(2, device="cuda")], 64)
    assert set(got.cpu().tolist()) == set(want.tolist())


@pytest.mark.parametrize("row", ["grace", "wise"])
def test_editors_that_draw_edit_alike_on_cuda_and_cpu(row):
    """GRACE's cold values and WISE's shard masks are drawn on the CPU, so one seed gives one edit
    on any device (drawn with the GPU's generator, a tiny WISE run's SR was 0.8 on an H100 and 0.9
    on the CPU)."""
    import random

    import editors  # noqa: F401
    from benchmark.registry import EDITORS
    from benchmark.types import Example
    from tests.conftest import FAMILIES, tiny
    from tests.test_editor_matrix import ROWS
    from tests.test_tpatcher import _splits

    states = []
    for device in ("cuda", "cpu"):
        adapter = tiny(FAMILIES["decoder"], layers=3, seed=1, device=device)
        entry = EDITORS.get(row)
        editor = entry.target(entry.config_class(name=row, **ROWS[row]), adapter)
        editor.prepare(_splits(adapter).for_editor())
        for i, prompt in enumerate(["The capital of France is", "Lyon is a city in", "Oslo lies in"]):
            random.seed(i)
            torch.manual_seed(i)
            editor.edit(Example(f"e{i}", prompt, " Oslo"))
        states.append({k: v.cpu() for k, v in editor.edit_state().items() if isinstance(v, torch.Tensor)})
    on_gpu, on_cpu = states
    assert on_gpu.keys() == on_cpu.keys() and on_gpu
    for name in on_gpu:
        if on_gpu[name].dtype.is_floating_point:
            assert torch.allclose(on_gpu[name], on_cpu[name], atol=1e-3), name
        else:
            assert torch.equal(on_gpu[name], on_cpu[name]), name


@pytest.mark.parametrize("name", ["ke_style", "mend_style"])
def test_the_hypernetworks_train_on_cuda(name):
    """KE's training phase failed on a GPU (cuDNN's LSTM backward in eval mode) while it passed on
    the CPU."""
    assert fit_modes(name, "cuda") == ([("train", True), ("val", False)], False)


@pytest.mark.parametrize("name", ["memit", "rome"])
def test_prefixes_are_the_cpus_with_the_model_on_cuda(name):
    """ROME's tiny run differed between a GPU and a CPU; its prefixes were drawn with the GPU's
    generator then. Now from a CPU generator: the same prefixes, up to a draw that the logits'
    rounding moves across a boundary (none in these)."""
    import editors  # noqa: F401  (registers them)
    from benchmark.registry import EDITORS
    from tests.conftest import FAMILIES, tiny, trained_weights

    prefixes = []
    for device in ("cuda", "cpu"):
        adapter = tiny(FAMILIES["decoder"], checkpoint=trained_weights("decoder"), device=device)
        entry = EDITORS.get(name)
        editor = entry.target(entry.config_class(name=name, layers=[0], context_templates=6), adapter)
        prefixes.append(editor._prefixes())
    assert prefixes[0] == prefixes[1]


def test_kept_positions_rerun_gives_the_full_forwards_logits_on_cuda():
    """v*'s rerun from each row's start (editor.mode=kv) on the device: the full forward's logits."""
    from benchmark.models.kept_positions import kept_positions
    from tests.conftest import tiny

    adapter = tiny("tiny-llama", layers=3, seed=1, device="cuda")
    batch = adapter.encode(["The capital of France is", "Where is the Eiffel Tower located? It is in"],
                           [" Paris", " France"])
    logits, rerun = kept_positions(adapter, batch, 1, torch.tensor([3, 5]))
    with torch.no_grad():
        assert torch.allclose(rerun(), logits, atol=1e-3)
