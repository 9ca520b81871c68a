"""retina_np/schedule.py: the training step's independent work side by side gives the bits of
the model's own calls, and really runs on other threads."""

import threading

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from retina_np import schedule
from retina_np.detection import losses
from retina_np.kernels import cpu, threads
from retina_np.models import RetinaNet, RetinaNetConfig, heads
from retina_np.nn import Conv2d, Module


@pytest.fixture
def two_cores():
    """Numba on two threads (two tasks side by side get one each) and back afterwards."""
    x = np.ones((2, 4, 64, 64), np.float32)  # a parallel loop, so that Numba picks its layer
    cpu.groupnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32), 2, 1e-5)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread here: nothing runs side by side")
    before = numba.get_num_threads()
    numba.set_num_threads(2)
    if threads._threads_per_task(2) is None:
        numba.set_num_threads(before)
        pytest.skip(f"tasks run one by one here (threading layer {numba.threading_layer()})")
    yield
    numba.set_num_threads(before)


def _targets(rng, n_images, size=64):
    """n_images targets of 1 to 3 boxes each, labels 0 or 1."""
    targets = []
    for _ in range(n_images):
        xy = rng.uniform(0, 0.6 * size, size=(int(rng.integers(1, 4)), 2))
        wh = rng.uniform(8, 0.4 * size, size=xy.shape)
        targets.append({"boxes": np.concatenate([xy, xy + wh], 1).astype(np.float32),
                        "labels": rng.integers(0, 2, len(xy))})
    return targets


def _config():
    config = RetinaNetConfig.tiny(2)
    config.head_norm_groups = 4  # the shapes preset's GroupNorm heads
    return config


def _step(net, model, images, targets):
    """Forward, loss and backward through ``net`` (the model, or it Scheduled)."""
    cls, box = net(images)
    step_losses, d_cls, d_box = net.loss(cls, box, targets, images.shape[-2:])
    net.backward(d_cls, d_box)
    assert all(m.defer_weight_grad is None for m in model.modules() if isinstance(m, Conv2d))
    return step_losses, cls, box, {n: p.grad for n, p in model.named_parameters()}


class _Threads:
    """Which threads ran the subnets' forwards, the images' matching and losses and the
    weight-gradient queue, and what went on the queue (recorded by wrapping those functions)."""

    def __init__(self, monkeypatch):
        self.subnets, self.matching, self.images, self.workers = {}, [], set(), set()
        self.queued, self.weight_grads = [], []
        self.convs = {}  # id(conv) -> the thread of its forward
        forward, match = heads._Subnet.forward, losses.match_and_encode_kernel
        halves = schedule._halves_side_by_side
        conv_forward = Conv2d.forward
        append, work_through = schedule.WorkQueue.append, schedule.WorkQueue.work_through
        add_grads = Conv2d._add_grads
        zero_grad = Module.zero_grad
        self.zeroed = None  # the thread that zeroed the gradients

        def subnet_forward(subnet, levels):
            self.subnets[type(subnet).__name__] = threading.get_ident()
            return forward(subnet, levels)

        def match_and_encode(*args):
            self.matching.append(threading.get_ident())
            return match(*args)

        def halves_recorded(fn, items, like):  # the images' losses (after the matching)
            def image_loss(item):
                self.images.add(threading.get_ident())
                return fn(item)
            return halves(image_loss, items, like)

        def queue_append(queue, fn):
            self.queued.append(fn)
            return append(queue, fn)

        def queue_work_through(queue):
            self.workers.add(threading.get_ident())
            return work_through(queue)

        def conv_forward_recorded(conv, x):
            self.convs[id(conv)] = threading.get_ident()
            return conv_forward(conv, x)

        def conv_add_grads(conv, dw, db):
            self.weight_grads.append(conv)
            return add_grads(conv, dw, db)

        def zero_grad_recorded(module):
            self.zeroed = threading.get_ident()
            return zero_grad(module)

        monkeypatch.setattr(heads._Subnet, "forward", subnet_forward)
        monkeypatch.setattr(Module, "zero_grad", zero_grad_recorded)
        monkeypatch.setattr(losses, "match_and_encode_kernel", match_and_encode)
        monkeypatch.setattr(schedule, "_halves_side_by_side", halves_recorded)
        monkeypatch.setattr(schedule.WorkQueue, "append", queue_append)
        monkeypatch.setattr(schedule.WorkQueue, "work_through", queue_work_through)
        monkeypatch.setattr(Conv2d, "_add_grads", conv_add_grads)
        monkeypatch.setattr(Conv2d, "forward", conv_forward_recorded)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_scheduled_step_gives_the_bits_of_the_plain_one(two_cores, monkeypatch, dtype):
    """Every kernel on one thread both ways (a GEMM's rounding, and the algorithm a kernel
    picks, depend on its thread count): the plain step with Numba and BLAS on one thread;
    the scheduled one with Numba on two, so that two tasks run side by side with one each,
    while the tiny model's small backbone kernels go to one thread by themselves
    (``threads.budget``)."""
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 3, 64, 64)).astype(dtype)  # loss halves of 2 and 1 images
    targets = _targets(rng, 3)
    targets[1] = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}

    def model():
        return RetinaNet(_config(), seed=2).astype(dtype).train()

    with threadpool_limits(1, user_api="blas"):
        numba.set_num_threads(1)
        plain_model = model()
        plain = _step(plain_model, plain_model, images, targets)
        numba.set_num_threads(2)
        ran = _Threads(monkeypatch)
        scheduled_model = model()
        for p in scheduled_model.parameters():  # what the zeroing beside the stem must clear
            p.grad = np.full_like(p.data, 7.0)
        scheduled = _step(schedule.Scheduled(scheduled_model, targets=targets, zero_grad=True),
                          scheduled_model, images, targets)
        monkeypatch.undo()

    assert scheduled[0] == plain[0]  # the losses
    np.testing.assert_array_equal(scheduled[1], plain[1])  # cls_logits
    np.testing.assert_array_equal(scheduled[2], plain[2])  # box_deltas
    assert scheduled[3].keys() == plain[3].keys()
    for name, grad in plain[3].items():
        assert np.abs(grad).max() > 0, name
        np.testing.assert_array_equal(scheduled[3][name], grad, err_msg=name)

    # and the work really went to other threads
    here = threading.get_ident()
    assert ran.subnets["ClassificationHead"] == here != ran.subnets["RegressionHead"]
    # each block's shortcut beside its 3x3s; the FPN's P3 output conv beside the others
    body, fpn = scheduled_model.backbone.body, scheduled_model.backbone.fpn
    blocks = [b for stage in (body.layer1, body.layer2, body.layer3, body.layer4) for b in stage]
    shortcuts = [b for b in blocks if b.downsample is not None]
    assert shortcuts
    for b in shortcuts:
        assert ran.convs[id(b.conv1)] == here != ran.convs[id(b.downsample[0])]
    assert ran.convs[id(fpn.layer_blocks[0][0])] == here
    assert ran.convs[id(fpn.layer_blocks[1][0])] != here
    assert ran.convs[id(fpn.extra_blocks.p7)] != here
    # the FPN's laterals of C3 and C4 beside the residual branches of layer3 and layer4
    assert ran.convs[id(fpn.inner_blocks[0][0])] == ran.convs[id(body.layer3[0].downsample[0])]
    assert ran.convs[id(fpn.inner_blocks[1][0])] == ran.convs[id(body.layer4[0].downsample[0])]
    assert ran.convs[id(fpn.inner_blocks[0][0])] != here
    # every image matched once, one after another beside the stem's max pooling (on the
    # thread that zeroed the gradients there), then their losses: the halves side by side
    assert len(ran.matching) == len(images) and set(ran.matching) == {ran.zeroed} != {here}
    assert len(ran.images) == 2
    convs = [m for m in scheduled_model.modules() if isinstance(m, Conv2d)]
    # every conv's weight gradient went on the queue but the stem's (no input gradient),
    # and each was added once; two threads worked through the queue
    assert len(ran.queued) == len(convs) - 1 == sum(c.needs_input_grad for c in convs)
    assert sorted(map(id, ran.weight_grads)) == sorted(map(id, convs))
    assert len(ran.workers) == 2


@pytest.mark.parametrize("block, p6_from", [("bottleneck", "c5"), ("basic", "c5")])
def test_the_scheduled_backbone_gives_the_plain_bits_for_every_layout(two_cores, block, p6_from):
    """``schedule.backbone_forward`` (shortcuts beside the 3x3s, the FPN's output convs side
    by side) walks the backbone as ``BackboneWithFPN.forward`` does, for bottleneck blocks
    and for P6 from C5 too: the same levels, bit for bit (every kernel on one thread)."""
    config = _config()
    config.block, config.p6_from = block, p6_from
    images = np.random.default_rng(3).normal(size=(2, 3, 64, 64)).astype(np.float32)
    with threadpool_limits(1, user_api="blas"):
        numba.set_num_threads(1)
        plain = RetinaNet(config, seed=4).train().features(images)
        numba.set_num_threads(2)
        model = RetinaNet(config, seed=4).train()
        scheduled = model.features(images, backbone=schedule.backbone_forward)
    assert len(scheduled) == len(plain) == 5
    for a, b in zip(scheduled, plain):
        np.testing.assert_array_equal(a, b)


def test_the_comparison_sees_a_lost_weight_gradient(two_cores, monkeypatch):
    """The test above can fail: a queue that drops one function leaves one gradient out."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(2, 3, 64, 64)).astype(np.float32)
    targets = _targets(rng, 2)
    dropped = []
    append = schedule.WorkQueue.append
    monkeypatch.setattr(schedule.WorkQueue, "append",
                        lambda queue, fn: dropped.append(fn) if not dropped else append(queue, fn))
    with threadpool_limits(1, user_api="blas"):
        model = RetinaNet(_config(), seed=2).train()
        lossy = _step(schedule.Scheduled(model), model, images, targets)[3]
        monkeypatch.undo()
        model = RetinaNet(_config(), seed=2).train()
        whole = _step(model, model, images, targets)[3]
    differ = [n for n in whole if not np.array_equal(lossy[n], whole[n])]
    assert len(dropped) == 1 and len(differ) >= 1


def test_the_heads_side_by_side_give_the_bits_of_the_heads_one_by_one(two_cores):
    """The subnets' outputs and input gradients; their parameters' gradients are up to the
    rounding of the weight-gradient GEMMs here, on two BLAS threads one by one."""
    model = RetinaNet(_config(), seed=1).train()
    rng = np.random.default_rng(0)
    levels = [rng.normal(size=(2, 8, s, s)).astype(np.float32) for s in (8, 4, 2, 1, 1)]
    d_cls, d_box = (rng.normal(size=o.shape).astype(np.float32) for o in model.head(levels))
    model.head.backward(d_cls, d_box)

    def head_pass(forward, backward):
        model.zero_grad()
        cls, box = forward(model.head, levels)
        d_levels = backward(model.head, d_cls, d_box)
        return cls, box, d_levels, {n: p.grad for n, p in model.head.named_parameters()}

    side = head_pass(schedule.head_forward, schedule.head_backward)
    alone = head_pass(heads.RetinaNetHead.forward, heads.RetinaNetHead.backward)
    for a, b in zip(side[:2] + tuple(side[2]), alone[:2] + tuple(alone[2])):
        np.testing.assert_array_equal(a, b)
    for name, grad in alone[3].items():
        np.testing.assert_allclose(side[3][name], grad, rtol=1e-5,
                                   atol=1e-5 * np.abs(grad).max(), err_msg=name)


def test_the_loss_halves_report_a_bad_box_as_one_by_one(two_cores):
    """A bad target in either half raises the error of the first bad image."""
    model = RetinaNet(_config(), seed=1).train()
    rng = np.random.default_rng(3)
    images = rng.normal(size=(4, 3, 64, 64)).astype(np.float32)
    targets = _targets(rng, 4)
    targets[3] = {"boxes": np.array([[5.0, 5, 5, 9]], np.float32), "labels": np.array([0])}
    targets[1] = {"boxes": np.array([[5.0, 5, 9, 5]], np.float32), "labels": np.array([0])}
    net = schedule.Scheduled(model)
    cls, box = net(images)
    with pytest.raises(ValueError, match="image 1: box 0"):
        net.loss(cls, box, targets, images.shape[-2:])
    model.clear_caches()


def test_work_queue_is_worked_through_in_order_by_every_worker():
    later = schedule.WorkQueue()
    done = []
    for i in range(5):
        later.append(lambda i=i: done.append(i))
    later.close(workers=2)
    later.work_through()  # one worker takes everything, then its close
    assert done == [0, 1, 2, 3, 4]
    later.work_through()  # the second close lets a second worker return at once
    assert done == [0, 1, 2, 3, 4]
