"""MinkowskiEngine backend (optional): placeholder until the backend lands."""

from ..errors import UserError


def available() -> bool:
    return False


class MinkowskiBackend:
    def __init__(self):
        raise UserError("backend=minkowski needs MinkowskiEngine, which is not installed")
