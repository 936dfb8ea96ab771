"""Facts about how the kernels were compiled (OpenMP on or off) and the OpenMP runtime."""
from cynet._kernels._openmp cimport CYNET_HAVE_OPENMP, omp_get_max_threads, omp_get_num_procs


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(CYNET_HAVE_OPENMP)


def openmp_max_threads():
    """The OpenMP runtime's default team size (1 in a serial build)."""
    return omp_get_max_threads()


def openmp_num_procs():
    """Processors the OpenMP runtime sees (1 in a serial build)."""
    return omp_get_num_procs()
