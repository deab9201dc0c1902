"""A small Trainer for the state-file tests."""

from mxnet import autograd, gluon, nd


def dense_trainer(prefix: str, step: bool, **kwargs) -> gluon.Trainer:
    """``Dense(3, in_units=4)`` under ``adagrad_scratch`` (lr 0.1), with its parameter names
    under ``prefix``; after one update if ``step`` (the states exist from then on)."""
    net = gluon.nn.Dense(3, in_units=4, prefix=prefix)
    net.initialize()
    trainer = gluon.Trainer(net.collect_params(), "adagrad_scratch", {"learning_rate": 0.1},
                            **kwargs)
    if step:
        with autograd.record():
            loss = net(nd.ones((2, 4))).sum()
        loss.backward()
        trainer.step(2)
    return trainer
