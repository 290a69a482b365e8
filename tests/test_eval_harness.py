"""The evaluation side's shared pieces: the runners' harness (eval/harness.py), the canaries
(eval/canaries.py), and imports inside eval/ that run one way (no cycle, ground truth below the audit)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from collafuse_privacy.attacks.base import NotApplicable
from collafuse_privacy.attacks.membership import FAMILY
from collafuse_privacy.data import ClientSplit, Dataset, Splits
from collafuse_privacy.errors import UserError
from collafuse_privacy.eval.canaries import Canaries, appended, canaries_path, insert, make_canaries, slot_rows, \
    with_canaries  # fmt: skip
from collafuse_privacy.eval.harness import Attempt, attempts, checked_methods

EVAL = Path(__file__).resolve().parents[1] / "eval"


# ---- harness ---------------------------------------------------------------------------------


def test_attempts_time_each_method_and_record_what_does_not_apply():
    def attempt(name):
        if name == "b":
            raise NotApplicable("no releases to score")
        return name * 2

    lines = []
    got = list(attempts(["a", "b", "c"], attempt, log=lines.append, indent="  "))
    assert [a.name for a in got] == ["a", "b", "c"]
    assert [a.output for a in got] == ["aa", None, "cc"]
    assert [a.applicable for a in got] == [True, False, True] and got[1].reason == "no releases to score"
    assert all(a.seconds >= 0 for a in got)
    assert lines == ["  b: not applicable (no releases to score)"]
    (b,) = attempts(["b"], attempt)  # without a log: recorded, not printed
    assert b == Attempt("b", None, b.seconds, "no releases to score")


def test_attempts_let_other_errors_through():
    def attempt(name):
        raise ValueError("a bug, not a property of the view")

    with pytest.raises(ValueError):
        list(attempts(["a"], attempt))


def test_checked_methods_resolve_names_options_and_cap():
    names, options = checked_methods(FAMILY, None, None)
    assert names == FAMILY.defaults() and options == {}
    names, options = checked_methods(FAMILY, ["loss", "loss"], {"loss": {"n_noise": 2}}, cap=1)
    assert names == ["loss"] and options == {"loss": {"n_noise": 2}}
    with pytest.raises(UserError, match="known: "):
        checked_methods(FAMILY, ["nosuch"], None)
    with pytest.raises(UserError, match="cap must be at least 1"):
        checked_methods(FAMILY, ["loss"], None, cap=0)


# ---- canaries --------------------------------------------------------------------------------


def _data(n=24):
    g = torch.Generator().manual_seed(0)
    ds = Dataset(images=torch.rand(n, 1, 4, 4, generator=g) * 2 - 1, labels=torch.arange(n) % 3, name="toy")
    splits = Splits(public=[0, 1], clients=[ClientSplit(members=[2, 3, 4, 5, 6], holdout=[7, 8, 9, 10, 11]),
                                            ClientSplit(members=[12, 13, 14, 15, 16], holdout=[17, 18, 19, 20, 21])])
    return ds, splits


@pytest.mark.parametrize("target", ["server", "client:1"])
def test_inserted_canaries_are_members_with_new_ids(target):
    ds, splits = _data()
    can = make_canaries(ds, splits, 8, "worst-case", target, seed=3)
    data2, splits2 = insert(ds, splits, can)
    ins = can.ids >= 0
    assert torch.equal(can.ids[ins], len(ds) + torch.arange(int(ins.sum())))  # after the data set's, in slot order
    assert len(data2) == len(ds) + int(ins.sum()) and torch.equal(data2.images[: len(ds)], ds.images)
    assert torch.equal(data2.images[can.ids[ins]], can.inserted[ins])
    for k in range(2):
        new = can.ids[ins & (can.client == k)].tolist()
        assert splits2.members[k] == splits.members[k] + new and splits2.holdout[k] == splits.holdout[k]
    if target == "server":  # replace-one: every slot holds x or x' by its coin, labels tied to the coin
        assert can.game == "replace-one" and bool(ins.all())
        assert torch.equal(data2.labels[can.ids], can.coin.long())
    else:  # add/remove: only the slots whose coin came up hold an image, all in client 1
        assert can.game == "add/remove" and torch.equal(ins, can.coin) and bool((can.client == 1).all())


def test_a_run_with_canaries_rebuilds_the_dataset_it_trained_on(tmp_path):
    ds, splits = _data()
    can = make_canaries(ds, splits, 4, "in-distribution", "server", seed=1)
    assert with_canaries(tmp_path, ds) is ds  # an ordinary run: unchanged
    canaries_path(tmp_path).parent.mkdir(parents=True)
    can.save(canaries_path(tmp_path))
    back = Canaries.load(canaries_path(tmp_path))
    assert torch.equal(back.coin, can.coin) and torch.equal(back.ids, can.ids) and back.labels_tied
    rebuilt = with_canaries(tmp_path, ds)
    assert torch.equal(rebuilt.images, insert(ds, splits, can)[0].images) and torch.equal(rebuilt.images,
                                                                                          appended(ds, can).images)
    assert torch.equal(rebuilt.labels, appended(ds, can).labels)


def test_slot_rows_link_recorded_rows_to_their_slots():
    ds, splits = _data()
    can = make_canaries(ds, splits, 4, "worst-case", "server", seed=5)  # replace-one: every slot inserted
    ids = can.ids.tolist()
    row_ids = torch.tensor([3, ids[2], ids[0], 5, ids[2]])  # 3, 5: ordinary members' ids
    assert slot_rows(can, row_ids) == {2: [1, 4], 0: [2]}  # slots never released are absent


# ---- imports -----------------------------------------------------------------------------------


def _eval_imports(path: Path) -> set[str]:
    """The eval modules ``path`` imports (relative imports, at any depth: a function-level import that
    hides a cycle counts), resolved to file stems."""
    pkg = path.parent.relative_to(EVAL).parts
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(pkg[: len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
            mod = base + (node.module.split(".") if node.module else [])
            names = [mod] if node.module else [mod + [a.name] for a in node.names]
            for m in names:
                if (EVAL.joinpath(*m).with_suffix(".py")).is_file():
                    out.add("/".join(m))
                elif (EVAL.joinpath(*m) / "__init__.py").is_file():
                    out.add("/".join(m + ["__init__"]))
    return out


def test_eval_modules_import_each_other_one_way():
    graph = {}
    for f in EVAL.rglob("*.py"):
        graph["/".join(f.relative_to(EVAL).with_suffix("").parts)] = _eval_imports(f)
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            visit(d, path + [m])
        state[m] = 2

    for m in sorted(graph):
        visit(m, [])
    assert "audit" not in graph["ground_truth"] and "canaries" in graph["ground_truth"]


def test_ground_truth_loads_without_the_audit():
    code = "import sys, collafuse_privacy.eval.ground_truth; print('collafuse_privacy.eval.audit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
