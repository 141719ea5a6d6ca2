"""``autotrace doctor``: check the configuration, the collector and the environment.

Every check yields one :class:`~autotrace.doctor.check.Check` (OK / WARN / FAIL, a
message and, for WARN and FAIL, the fix in plain words). The exit status is 0 when spans
can be delivered. Nothing here imports an instrumented library; every network wait is
bounded.

- :mod:`.check`: a check's result, and the secrets kept out of its text;
- :mod:`.settings`: the configuration as :mod:`autotrace.config` reads it, the service
  name, the exporter's headers;
- :mod:`.endpoint`: probing the collector's endpoint and naming what is wrong with it;
- :mod:`.span`: one real span sent through the agent's own exporter;
- :mod:`.command`: what ``autotrace run`` would make of the command;
- :mod:`.environment`: the libraries covered and other agents, seen by the command's Python;
- :mod:`.report`: the checks in order, the text and JSON reports, the exit status.
"""
