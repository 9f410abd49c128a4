"""Built-in token data: modular addition and characters of text, as the documented rules say."""

import numpy as np
import pytest

import nn_eos as ne
from nn_eos import tokens


def test_modular_addition_is_every_sum_split_without_overlap():
    p = 7
    train, test, every = (tokens.modular_addition(p, split, 0.6, seed=3) for split in ("train", "test", "all"))
    assert len(train[0]) == round(0.6 * 49) and len(train[0]) + len(test[0]) == 49 == len(every[0])
    pairs = {tuple(x[:2]) for x in np.concatenate([train[0], test[0]])}
    assert len(pairs) == 49                                       # disjoint, and together every pair
    for X, y in (train, test, every):
        assert X.dtype == np.int64 and np.all(X[:, 2] == p)       # "=" is token p
        np.testing.assert_array_equal(y[:, :2], X[:, :2])         # the first positions echo their token
        np.testing.assert_array_equal(y[:, 2], (X[:, 0] + X[:, 1]) % p)
    assert tokens.vocabulary_size(*every) == p + 1
    with pytest.raises(ValueError, match="unknown split"):
        tokens.modular_addition(p, "validation")
    with pytest.raises(ValueError, match="modulus must be"):
        tokens.modular_addition(1)


def test_characters_are_windows_of_the_text_and_their_next_characters():
    text = "abcabd abcabd xyz"
    X, y = tokens.characters(n=None, length=4, text=text)
    letters = tokens.alphabet(text)
    assert len(X) == len(text) - 4
    for i, (x_row, y_row) in enumerate(zip(X, y)):
        assert "".join(letters[j] for j in x_row) == text[i:i + 4]
        assert "".join(letters[j] for j in y_row) == text[i + 1:i + 5]
    X5, _ = tokens.characters(n=5, length=4, text=text, seed=1)
    assert len(X5) == 5 and len({tuple(r) for r in X5}) == 5
    generated = tokens.arithmetic_text(sentences=3, seed=0)
    assert generated.count(" plus ") == 3 and generated.count(" is ") == 3
    with pytest.raises(ValueError, match="too few for windows"):
        tokens.characters(length=20, text=text)


def test_a_transformer_learns_modular_addition_on_the_train_split():
    """Full-batch GD on a small transformer lowers the token-level loss from log V."""
    X, y = ne.datasets.modular_addition(5, "all")
    net = ne.transformer(6, 8, 2, 1, 3, seed=0)
    loss = ne.TrainingLoss(net, "cross_entropy", X, y)
    start = loss.value()
    assert start == pytest.approx(np.log(6), abs=0.5)
    theta = net.theta.copy()
    for _ in range(100):
        theta = theta - 0.5 * loss.gradient(theta)
    assert loss.value(theta) < 0.7 * start


def test_the_shipped_transformer_config_builds_its_network():
    import os

    from nn_eos.experiments import config
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples", "configs",
                        "transformer_characters.toml")
    experiment = config.load(path)
    X, y = config.training_data(experiment)
    net, X = config.build_net(experiment["net"], X, config.count_classes(y, warn=False))
    assert X.shape == (128, 16) and X.dtype == np.int64
    assert net.spec["kind"] == "transformer" and net.output_shape == (16, tokens.vocabulary_size(X, y))
    with pytest.raises(config.ConfigError, match="needs \\(n, T\\) integer token ids"):
        config.shaped_for_net({"arch": "transformer"}, np.zeros((3, 4)))
