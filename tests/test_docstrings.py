"""Every ``>>>`` example in cynet's docstrings runs and prints what the docstring says (the docstrings are the API
reference: an example that drifted from the code would teach the wrong thing). Examples that need files or a long run
are marked ``# doctest: +SKIP`` where they stand.
"""
import doctest
import importlib
import pkgutil

import pytest

import cynet

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(cynet.__path__, "cynet.")
                 if name != "cynet.__main__")


@pytest.mark.parametrize("name", ["cynet"] + MODULES)
def test_docstring_examples_print_what_they_say(name, capsys):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]
    if not tests:
        pytest.skip(f"{name} has no examples")
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    state = cynet.get_rng_state()
    try:
        for test in tests:
            runner.run(test)
    finally:
        cynet.set_rng_state(state)
    report = capsys.readouterr().out
    assert runner.failures == 0, report
    assert runner.tries > 0
