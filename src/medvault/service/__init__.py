"""The operations every shell runs, and the session they run in (see session.py, runs.py).

The CLI, the HTTP API and the scheduler are thin shells over these functions: a shell turns
its input into plain typed options, calls one function, and renders the frozen result. No
function here prints, prompts, or reads argv or the environment.
"""
