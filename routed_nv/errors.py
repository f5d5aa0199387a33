"""The root of the errors routed_nv raises on purpose.

Every error says whether trying again later may succeed (`transient`: netlink busy, agent
starting, BIRD restarting) or whether someone must change something first (permanent: a bad
config value, a missing key file). The agent retries transient failures on its next pass and
reports permanent ones; the CLI maps both to one error line.
"""


class RoutedNvError(Exception):
    """An error routed_nv reports as one line naming what failed."""

    transient: bool = False


class TransientError(RoutedNvError):
    """Trying again later may succeed without anyone changing anything."""

    transient = True
