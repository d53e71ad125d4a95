"""Evaluation: counted MACs, fidelity to the unaccelerated output, and reports."""
