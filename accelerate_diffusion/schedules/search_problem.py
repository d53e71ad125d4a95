"""The pymoo problem of the schedule search, in its own module so that importing
``schedules.search`` (the CLI does) needs no pymoo, and the pickled checkpoint finds the class."""

from pymoo.core.problem import Problem


class BitProblem(Problem):
    """The schedule bitstring; objectives and constraint are computed outside (ask and tell)."""

    def __init__(self, n_var: int):
        super().__init__(n_var=n_var, n_obj=2, n_ieq_constr=1, xl=0, xu=1, vtype=bool)
