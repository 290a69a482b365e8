"""protocol/ owns the whole message: the conditioning registry, decoding by the protocol, the envelope,
bytes per row, the row shuffle and the hand-over formula; registries match the config's declared names."""

import pytest
import torch

from collafuse_privacy.config import (CHOICES, CONDITIONING_NAMES, DATASET_NAMES, PARTITION_NAMES, PROTOCOL_NAMES,
                                      SCHEDULE_NAMES, DiffusionConfig)
from collafuse_privacy.data import DATASETS, PARTITIONS
from collafuse_privacy.diffusion import SCHEDULES
from collafuse_privacy.errors import UserError
from collafuse_privacy.orchestration import EXECUTORS
from collafuse_privacy.protocol import (split_protocols, CONDITIONINGS, ENVELOPE, PROTOCOLS, Cut, CutImageMessage, SharedNoiseMessage,
                                        make_conditioning, make_protocol, noised)
from collafuse_privacy.registry import Registry
from collafuse_privacy.targets import parse_target, target_name


def _cut(t_c=7, T=20):
    return Cut(DiffusionConfig(timesteps=T), t_c)


def _msgs(labels=True):
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([3, 1, 4]) if labels else None
    a = CutImageMessage(0, y, h=torch.randn(3, 1, 8, 8, generator=g))
    b = CutImageMessage(2, y[:2] if labels else None, h=torch.randn(2, 1, 8, 8, generator=g))
    return [a, b]


def test_every_declared_name_is_registered_and_the_choices_come_from_them():
    for reg, names, key in [(PROTOCOLS, PROTOCOL_NAMES, "protocol.kind"),
                            (CONDITIONINGS, CONDITIONING_NAMES, "model.server_conditioning"),
                            (DATASETS, DATASET_NAMES, "data.name"), (PARTITIONS, PARTITION_NAMES, "data.partition"),
                            (SCHEDULES, SCHEDULE_NAMES, "diffusion.schedule")]:
        assert tuple(reg.names()) == names and CHOICES[key] == names
    with pytest.raises(ValueError, match="not declared"):
        Registry("thing", names=("a",)).register("b")(type("B", (), {}))
    assert EXECUTORS.names() == ["local", "process", "ray"]


def test_conditioning_decides_what_crosses_and_builds_the_class_labels():
    msgs, y = _msgs(), torch.tensor([5, 6])
    none, client, labels = (make_conditioning(n) for n in ("none", "client", "labels"))
    assert none.message_labels(y) is None and client.message_labels(y) is None
    assert torch.equal(labels.message_labels(y), y)
    assert none.class_labels(msgs) is None
    assert torch.equal(client.class_labels(msgs), torch.tensor([0, 0, 0, 2, 2]))
    assert torch.equal(labels.class_labels(msgs), torch.tensor([3, 1, 4, 3, 1]))
    assert [c.class_embeds(4, 10) for c in (none, client, labels)] == [None, 4, 10]
    assert [c.sends_labels for c in (none, client, labels)] == [False, False, True]
    with pytest.raises(UserError, match="known: none, client, labels"):
        make_conditioning("both")


@pytest.mark.parametrize("conditioning", CONDITIONING_NAMES)
@pytest.mark.parametrize("kind", split_protocols())
def test_encode_then_decode_by_the_protocol(kind, conditioning):
    proto = make_protocol(kind, _cut(), conditioning=conditioning)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1, torch.randn(4, 1, 8, 8, generator=g)
    t, y = torch.tensor([7, 9, 12, 19]), torch.tensor([1, 2, 3, 4])
    msg = proto.encode(1, x0, t, eps, ids=torch.arange(4), secret=5, labels=y)
    assert (msg.labels is not None) == (conditioning == "labels") == proto.sends_labels
    back = proto.decode(1, msg.tensors())
    assert type(back) is proto.message_type and back.client == 1
    assert msg.tensors().keys() == back.tensors().keys()
    assert all(torch.equal(msg.tensors()[k], back.tensors()[k]) for k in msg.tensors())
    # bytes per row: counted once (the message type's wire fields), equal to the tensors' sizes
    row = sum(v[0].numel() * v.element_size() for v in msg.tensors().values())
    assert proto.bytes_per_row((1, 8, 8)) == row and msg.nbytes() == 4 * row
    # the envelope: the payload, then (client, round)
    rec = msg.enveloped(3, keep=2)
    assert list(rec)[-2:] == list(ENVELOPE) and rec["client"].tolist() == [1, 1] and rec["round"].tolist() == [3, 3]
    assert torch.equal(rec["x"], msg.tensors()["x"][:2])


def test_decode_does_not_guess_the_type_from_the_keys():
    shared, cut_image = (make_protocol(k, _cut()) for k in ("shared-noise", "cut-image"))
    h = {"x": torch.zeros(2, 1, 8, 8)}
    assert isinstance(cut_image.decode(0, h), CutImageMessage)
    with pytest.raises(KeyError):  # a cut-image payload is no shared-noise message
        shared.decode(0, h)
    full = {"x": torch.zeros(2, 1, 8, 8), "t": torch.tensor([8, 9]), "eps": torch.zeros(2, 1, 8, 8)}
    assert isinstance(shared.decode(0, full), SharedNoiseMessage)


def test_model_inputs_put_the_class_labels_beside_the_server_batch():
    msgs = _msgs()
    proto = make_protocol("cut-image", _cut(), conditioning="client")
    x_t, t, target, labels = proto.model_inputs(msgs, torch.Generator().manual_seed(0), "cpu")
    x2, t2, target2 = proto.server_batch(msgs, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(x_t, x2) and torch.equal(t, t2) and torch.equal(target, target2)
    assert labels.tolist() == [0, 0, 0, 2, 2]


def test_shuffle_rows_draws_as_the_client_round_did():
    crossing = torch.tensor([True, False, True, True, False, True])
    a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    rows = make_protocol("cut-image", _cut()).shuffle_rows(crossing, a)
    want = torch.nonzero(crossing).flatten()[torch.randperm(4, generator=b)]
    assert torch.equal(rows, want) and torch.equal(a.get_state(), b.get_state())


def test_handover_formula_is_written_once():
    cut = _cut()
    proto = make_protocol("cut-image", cut)
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.rand(3, 1, 8, 8, generator=g), torch.randn(3, 1, 8, 8, generator=g)
    h = proto.handover(x0, eps)
    assert torch.equal(h, noised(x0, eps, cut.abar_handover))
    assert torch.equal(proto.model_range("server").data(x0, eps), h)  # what the model attacks rebuild
    assert torch.equal(proto.model_range("client").data(x0, eps), x0)


def test_one_target_parser():
    assert parse_target("server") == ("server", None) and parse_target("client:3") == ("client", 3)
    assert target_name(*parse_target("client:12")) == "client:12"
    for bad in ("client", "client:-1", "Server", "client:1a"):
        with pytest.raises(UserError, match="'server' or 'client:K'"):
            parse_target(bad)


def test_sampling_and_attack_labels_by_conditioning():
    none, client, labels = (make_conditioning(n) for n in ("none", "client", "labels"))
    g, h = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert none.sample_labels(1, 3, None, g, "cpu") is None
    assert client.sample_labels(1, 3, 2, g, "cpu").tolist() == [1, 1, 1]
    assert torch.equal(labels.sample_labels(1, 3, 10, g, "cpu"), torch.randint(0, 10, (3,), generator=h))
    assert none.probe_classes(None, 3, None) is None and list(client.probe_classes(2, 3, 3)) == [2]
    assert list(client.probe_classes(None, 3, 3)) == [0, 1, 2] and list(labels.probe_classes(0, 3, 4)) == [0, 1, 2, 3]
    assert labels.probe_classes(0, 3, None) is None


def test_the_config_imports_only_the_utilities_and_the_protocol_adds_its_checks():
    import subprocess
    import sys

    code = ("import sys, collafuse_privacy.config; "
            "print(sorted(m.split('.')[1] for m in sys.modules if m.startswith('collafuse_privacy.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {"config", "errors", "numbers", "options", "typed", "registry"}
    from collafuse_privacy.config import load_config
    from collafuse_privacy.config.validate import CHECKS
    from collafuse_privacy.protocol import check_config

    assert check_config in CHECKS
    with pytest.raises(UserError, match="protocol.fixed_noise"):
        load_config(None, ["protocol.kind=shared-noise", "protocol.fixed_noise=true"])
    with pytest.raises(UserError, match="too few"):
        load_config(None, ["diffusion.timesteps=3"])
