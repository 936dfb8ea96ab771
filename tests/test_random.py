"""cynet._random: the global generator, its state, and generator_scope (a global generator local to one thread).

Oracle: ``numpy.random.default_rng(seed)`` itself (``manual_seed(seed)`` and ``generator_scope(seed)`` must give its
very draws), and a copy of the process-wide generator's state taken before, to show that a scope never advances it.
"""
import threading

import numpy as np
import pytest

import cynet
from cynet import _random, nn
from cynet._random import default_generator, generator_scope, resolve_generator


def draws_after(state, n):
    """The next ``n`` draws of a generator in ``state`` (a copy: the state itself is not advanced)."""
    return _random.set_rng_state(state, np.random.default_rng()).random(n)


# --- outside a scope: the documented behaviour ------------------------------------------------------------------------
def test_manual_seed_and_state_round_trip_outside_a_scope():
    g = cynet.manual_seed(3)
    assert default_generator() is g and resolve_generator(None) is g
    np.testing.assert_array_equal(g.random(4), np.random.default_rng(3).random(4))
    state = cynet.get_rng_state()
    first = default_generator().random(5)
    cynet.set_rng_state(state)
    np.testing.assert_array_equal(default_generator().random(5), first)
    with pytest.raises(ValueError, match="manual_seed"):
        cynet.manual_seed(-1)


# --- inside a scope ---------------------------------------------------------------------------------------------------
def test_scope_draws_what_manual_seed_would_and_leaves_the_global_generator_alone():
    cynet.manual_seed(11)
    before = cynet.get_rng_state()
    with generator_scope(7) as g:
        assert default_generator() is g and resolve_generator(None) is g
        np.testing.assert_array_equal(g.random(3), np.random.default_rng(7).random(3))
        # layers drawing with generator=None draw from the scope: the same weights as cynet.manual_seed(7) gives
        scoped_weight = nn.Linear(4, 3).weight.data.copy()
    assert cynet.get_rng_state() == before                        # not advanced, not replaced
    np.testing.assert_array_equal(default_generator().random(4), draws_after(before, 4))
    cynet.manual_seed(7).random(3)                                 # the 3 draws the scope made before the layer
    np.testing.assert_array_equal(nn.Linear(4, 3).weight.data, scoped_weight)


def test_manual_seed_and_rng_state_inside_a_scope_act_on_the_scope_only():
    cynet.manual_seed(1)
    before = cynet.get_rng_state()
    with generator_scope(5):
        g = cynet.manual_seed(9)                                   # reseeds the scope's generator
        assert default_generator() is g
        np.testing.assert_array_equal(g.random(2), np.random.default_rng(9).random(2))
        state = cynet.get_rng_state()
        assert state == _random.get_rng_state(g)
        a = default_generator().random(3)
        cynet.set_rng_state(state)
        np.testing.assert_array_equal(default_generator().random(3), a)
    assert cynet.get_rng_state() == before


def test_scopes_nest_and_end_on_an_exception():
    cynet.manual_seed(2)
    before = cynet.get_rng_state()
    outer_oracle, inner_oracle = np.random.default_rng(4), np.random.default_rng(6)
    with generator_scope(4):
        assert default_generator().random() == outer_oracle.random()
        with pytest.raises(RuntimeError, match="inside"):
            with generator_scope(np.random.default_rng(6)):
                assert default_generator().random() == inner_oracle.random()
                raise RuntimeError("inside")
        assert default_generator().random() == outer_oracle.random()   # the outer scope is back
    assert cynet.get_rng_state() == before


def test_a_scope_belongs_to_its_thread():
    """A thread in a scope and the main thread draw alternately (a barrier orders them): each sees its own stream."""
    cynet.manual_seed(8)
    main_oracle, scoped_oracle = np.random.default_rng(8), np.random.default_rng(123)
    turn = threading.Barrier(2, timeout=10)
    scoped_draws, errors = [], []

    def worker():
        try:
            with generator_scope(123):
                for _ in range(3):
                    turn.wait()                     # the main thread drew just before
                    scoped_draws.append(default_generator().random())
                    cynet.manual_seed(123 + len(scoped_draws))     # reseeding here must not reach the main thread
                    turn.wait()
        except Exception as error:                  # reported below (an assert in a thread would be lost)
            errors.append(error)
            turn.abort()

    thread = threading.Thread(target=worker)
    thread.start()
    main_draws = []
    for _ in range(3):
        main_draws.append(default_generator().random())
        turn.wait()
        turn.wait()
    thread.join()
    assert not errors, errors
    assert main_draws == [main_oracle.random() for _ in range(3)]
    assert scoped_draws == [np.random.default_rng(123 + i).random() for i in range(3)]
    assert scoped_draws[0] == scoped_oracle.random()


@pytest.mark.parametrize("bad", [None, True, 1.5, "7", -1])
def test_generator_scope_rejects_bad_arguments(bad):
    with pytest.raises(ValueError if bad == -1 else TypeError, match="generator_scope"):
        with generator_scope(bad):
            pass


@pytest.mark.parametrize("make", [
    lambda g: resolve_generator(g),
    lambda g: nn.Linear(3, 2, generator=g),
    lambda g: nn.Conv2d(3, 2, 3, generator=g),
    lambda g: nn.Dropout(0.5, generator=g),
    lambda g: cynet.init.kaiming_normal_(np.empty((3, 4)), generator=g),
], ids=["resolve_generator", "Linear", "Conv2d", "Dropout", "init"])
def test_a_negative_seed_as_generator_is_refused_naming_cynet(make):
    # was NumPy's bare "ValueError: expected non-negative integer", naming neither cynet nor the argument
    with pytest.raises(ValueError, match="cynet: generator must be .* non-negative int seed.* -3"):
        make(-3)
    with pytest.raises(ValueError, match="cynet: generator"):
        make(np.int64(-1))


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox, np.random.SFC64])
def test_rng_state_round_trips_for_every_bit_generator(bit_generator):
    # resolve_generator takes any numpy Generator (a Dropout(generator=Generator(MT19937(0))), say), so its state
    # must go through get_rng_state / set_rng_state (save_trainer stores it): arrays in the state broke json.dumps
    generator = np.random.Generator(bit_generator(1))
    generator.random(3)
    state = _random.get_rng_state(generator)
    expected = generator.random(5)
    generator.random(7)
    assert np.array_equal(_random.set_rng_state(state, generator).random(5), expected)
    assert np.array_equal(_random.set_rng_state(state, np.random.Generator(bit_generator())).random(5), expected)
