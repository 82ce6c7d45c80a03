import torch

from dfad_lightning.data import NoiseStream


def stream(**kw):
    args = {"batch_size": 4, "nz": 8, "draws": 3, "length": 5, "seed": 0, "rank": 0}
    return NoiseStream(**{**args, **kw})


def test_one_pass_is_one_epoch_of_k_plus_one_draws():
    batches = list(stream())
    assert len(batches) == 5
    assert all(b.shape == (3, 4, 8) for b in batches)


def test_noise_is_fresh_at_every_step_and_every_iteration():
    batches = torch.stack(list(stream()))  # (iterations, draws, B, nz)
    flat = batches.reshape(-1, 4 * 8)
    assert torch.unique(flat, dim=0).shape[0] == flat.shape[0]


def test_the_next_epoch_continues_the_stream():
    s = stream()
    first, second = torch.stack(list(s)), torch.stack(list(s))
    assert not torch.equal(first, second)
    assert s.iteration == 10


def test_ranks_draw_different_noise_and_each_rank_is_reproducible():
    r0, r1 = torch.stack(list(stream(rank=0))), torch.stack(list(stream(rank=1)))
    assert not torch.equal(r0, r1)
    assert torch.equal(r0, torch.stack(list(stream(rank=0))))


def test_state_dict_resumes_the_same_stream_mid_epoch():
    straight = stream()
    expected = torch.stack(list(straight) + list(straight))  # two epochs, uninterrupted

    first = stream()
    it = iter(first)
    head = [next(it) for _ in range(3)]  # killed after 3 iterations
    resumed = stream()
    resumed.load_state_dict(first.state_dict())
    rest = iter(resumed)
    tail = [next(rest) for _ in range(2)] + list(resumed)  # Lightning pulls only the 2 batches left
    assert torch.equal(torch.stack(head + tail), expected)


def test_a_checkpoint_taken_while_a_batch_trains_counts_that_batch():
    s = stream()
    it = iter(s)
    next(it)
    assert s.state_dict()["iteration"] == 1
