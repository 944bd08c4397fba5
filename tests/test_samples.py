"""The Swift and Kotlin samples cannot be built or run here (no Apple or Android toolchain); what
can be checked is that every tensor name and manifest key they use exists in freshly exported
bundles of the forms they load (their ``Names`` blocks, which the code reads everything through)."""

import json
import re
from pathlib import Path

import pytest

from edge_rnn.export.bundle import export_bundle, read_manifest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = {"swift": ROOT / "examples/swift/EdgeRNNKeyboard.swift",
           "kotlin": ROOT / "examples/kotlin/EdgeRnnKeyboard.kt"}
# what each sample loads: Core ML in both state forms; ONNX full head (+ORT format) and prefix head
FORMS = {"swift": [dict(fmt="coreml", coreml_state="io"), dict(fmt="coreml", coreml_state="mlstate", precision="fp16")],
         "kotlin": [dict(fmt="onnx", with_log_probs=True, ort_format=True), dict(fmt="onnx", prefix_head=True)]}


def names_block(path: Path) -> list[str]:
    """The string literals between the sample's '---- names' and '---- end names' comments."""
    text = path.read_text()
    block = re.search(r"// ---- names \(checked by tests/test_samples.py\) ----\n(.*?)// ---- end names ----",
                      text, re.S)
    assert block, f"{path} has no names block"
    code = re.sub(r"//.*", "", block.group(1))  # comments may quote names loosely
    return re.findall(r'"([^"]+)"', code)


def keys(value) -> set[str]:
    """Every key anywhere in a JSON document."""
    if isinstance(value, dict):
        return set(value) | set().union(*(keys(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(keys(v) for v in value)) if value else set()
    return set()


def tensor_names(manifest: dict) -> set[str]:
    export = manifest["export"]
    specs = [*(manifest["inputs"] or []), *(manifest["outputs"] or []), *export.get("states", [])]
    if export.get("prefill"):
        specs += export["prefill"]["inputs"] + export["prefill"]["outputs"]
    return {s["name"] for s in specs} | {s["name"] for s in manifest["state"]}


@pytest.fixture(scope="module")
def fresh(trained, tmp_path_factory):
    run, _ = trained
    out = tmp_path_factory.mktemp("samples")
    return {sample: [read_manifest(export_bundle(run, out / f"{sample}{k}", **form)) | {"_dir": str(out / f"{sample}{k}")}
                     for k, form in enumerate(forms)] for sample, forms in FORMS.items()}


@pytest.mark.parametrize("sample", list(SAMPLES))
def test_sample_names_exist_in_fresh_bundles(fresh, sample):
    manifests = fresh[sample]
    used = names_block(SAMPLES[sample])
    assert len(used) >= 10
    tensors = set().union(*(tensor_names(m) for m in manifests))
    documented = set().union(*(keys(m) for m in manifests))
    documented |= set().union(*(keys(json.loads((Path(m["_dir"]) / "vocab.json").read_text())) for m in manifests))
    for name in used:
        if name.startswith("_"):  # a suffix: every state's output must carry it (state-as-io forms)
            io = [m for m in manifests if not m["export"].get("states")]
            assert io and all(s["name"] + name in tensor_names(m) for m in io for s in m["state"]), name
        else:
            assert name in tensors or name in documented, f"{sample} uses {name!r}: not in any fresh bundle"
    for m in manifests:  # the contract names every sample relies on
        assert {"char", "top_ids", "top_probs"} <= tensor_names(m) and {"char", "top_ids", "top_probs"} <= set(used)


def test_code_reads_names_through_the_block():
    """Outside the block the samples spell no tensor name as a literal (a typo there would escape)."""
    for path in SAMPLES.values():
        text = path.read_text()
        rest = re.sub(r"// ---- names .*?// ---- end names ----", "", text, flags=re.S)
        literals = set(re.findall(r'"([a-z_0-9]+)"', rest))
        assert not literals & {"char", "chars", "range", "top_ids", "top_probs", "log_probs", "_next"}, path


def test_readme_states_what_is_tested():
    readme = (ROOT / "examples/README.md").read_text()
    assert "not built or run here" in readme and "tests/test_app.py" in readme
