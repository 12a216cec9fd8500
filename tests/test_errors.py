"""cifar/errors.py: the project's warnings are one `warning: ...` line each; other packages'
keep Python's format."""

import warnings

from cifar.errors import RunWarning, one_line_warnings


def test_the_projects_warnings_are_one_line_and_others_keep_their_format(monkeypatch):
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    one_line_warnings()
    one_line_warnings()  # a second call changes nothing
    message = "the file system of /x refuses file locks\n(Function not implemented):  a run"
    ours = warnings.formatwarning(RunWarning(message), RunWarning, "cifar/x.py", 81, "warn(")
    assert ours == (
        "warning: the file system of /x refuses file locks (Function not implemented): a run\n"
    )
    theirs = warnings.formatwarning(UserWarning("old"), UserWarning, "lib.py", 3, "warn('old')")
    assert theirs == "lib.py:3: UserWarning: old\n  warn('old')\n"
    assert issubclass(RunWarning, UserWarning)
