"""The launcher's input errors that are not about a run's config."""
from spt_dist.errors import SptError


class StudyError(SptError, ValueError):
    """A runs folder, results file, job folder or report option that cannot be used as asked."""
