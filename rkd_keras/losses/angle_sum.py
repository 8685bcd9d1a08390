"""RKD-A's Huber sum over all N³ angles and its gradient, a chunk of vertices at a time (`keras.ops`).

Every angle comes from the batch's N×N Gram matrix instead of the official
N×N×D tensor of differences. The Gram matrix is accumulated in float64
(N²·D work) and the inner products of differences,
`⟨x_i − x_j, x_k − x_j⟩ = G_ik − G_jk − G_ji + G_jj`, are taken from it in
float64 before the angles are formed in float32, so near-duplicate rows keep
the accuracy of the direct form. The angles of `chunk` vertices are formed at
once, so memory is O(chunk·N²), and the gradient with respect to the
student's Gram matrix and inverse lengths is accumulated in the same pass, in
closed form: the backward pass neither keeps nor recomputes the angles.

`huber_sum` runs the chunks with `keras.ops.fori_loop` (JAX, PyTorch);
`angle_sum_tensorflow.huber_sum` is the TensorFlow loop, with the same
contract. Both must run inside `base.in_float64`.
"""

import functools

import keras

from rkd_keras.losses.base import centered_gram, magnitude, scaled_eps, squared_distances

# Angles in one `(chunk, N, N)` slab: 4M keeps a chunk's working set (about
# ten such float32/float64 tensors) in the low hundreds of MB at any N.
CHUNK_ELEMENTS = 2**22


def factors(x, eps):
    """The centred float64 Gram matrix and the inverse lengths `1/‖x_i − x_j‖` of `x / magnitude(x)`.

    Angles do not change with the scale of `x`; the power of two (exact) keeps
    the squared distances of embeddings ×1e20 inside float32's range.
    """
    scale = magnitude(x)
    gram = centered_gram(x / scale)
    squared = squared_distances(gram)
    eps = scaled_eps(eps, scale)
    # A zero difference has direction 0 (F.normalize in the official code).
    inverse_norm = keras.ops.where(squared > eps, keras.ops.rsqrt(keras.ops.maximum(squared, eps)), 0.0)
    return gram, inverse_norm


def cosines(gram, inverse_norm, vertices):
    """ψ_A at the given vertices j: `[j, i, k] = ⟨e_ji, e_jk⟩`, shape `(c, N, N)`.

    `e_ji = (x_i − x_j) / ‖x_i − x_j‖`, and the inner products are
    `⟨x_i − x_j, x_k − x_j⟩ = G_ik − G_jk − (G_ji − G_jj)` taken in float64, so
    near-duplicate rows lose no accuracy to cancellation. i = j, k = j and
    duplicate rows give 0, i = k gives 1, as in the official code.
    """
    gram_j = keras.ops.take(gram, vertices, axis=0)
    offset = gram_j - keras.ops.take(keras.ops.diagonal(gram), vertices)[:, None]
    dot = keras.ops.cast(gram[None] - gram_j[:, None, :] - offset[:, :, None], "float32")
    norm_j = keras.ops.take(inverse_norm, vertices, axis=0)
    return dot * norm_j[:, :, None] * norm_j[:, None, :]


def slopes(student_gram, student_norm, teacher_gram, teacher_norm, vertices, weight, delta):
    """One chunk's Huber slopes, student cosines and loss row sums: the part a backend fuses into one kernel."""
    student_cosines = cosines(student_gram, student_norm, vertices)
    difference = student_cosines - cosines(teacher_gram, teacher_norm, vertices)
    # huber(d) = r·(d − r/2) with r = clip(d, ±delta) = huber'(d): one
    # quantity gives the loss (PyTorch's smooth_l1 at delta=1) and its slope.
    slope = weight[:, None, None] * keras.ops.clip(difference, -delta, delta)
    return slope, student_cosines, keras.ops.sum(slope * (difference - 0.5 * slope), axis=2)


def chunk_terms(slope, student_cosines, row_losses, student_norm, vertices):
    """One chunk's Huber sum (float64) and its gradient terms, from the output of `slopes`.

    Returns `(total, Σ_j dot-gradient over the chunk (N, N), its row sums
    (c, N), the gradient of the inverse lengths (c, N))`. The reductions run
    outside a fused kernel: XLA on CPU would recompute the whole fused chain
    once per reduction.
    """
    total = keras.ops.cast(keras.ops.sum(row_losses), "float64")
    # cos_jik = dot_jik·a_ji·a_jk: the slope with respect to dot_jik.
    norm_j = keras.ops.take(student_norm, vertices, axis=0)
    dot_gradient = slope * norm_j[:, :, None] * norm_j[:, None, :]
    # cos is symmetric in (i, k), so both slots of a_j· give the same sum.
    norm_gradient = 2.0 * keras.ops.divide_no_nan(keras.ops.sum(slope * student_cosines, axis=2), norm_j)
    return total, keras.ops.sum(dot_gradient, axis=0), keras.ops.sum(dot_gradient, axis=2), norm_gradient


def gram_gradient(dot_gradient_sum, row_sums):
    """The gradient of the sum with respect to the Gram matrix, from the chunks' accumulated terms.

    dot_jik = G_ik − G_jk − G_ji + G_jj; the (j, k) and (j, i) terms give the
    same row sums by symmetry, and G_jj collects each row's total.
    """
    return dot_gradient_sum - 2.0 * row_sums + keras.ops.diag(keras.ops.sum(row_sums, axis=1))


def default_chunk_size(n):
    """Vertices per chunk so that one chunk holds about `CHUNK_ELEMENTS` angles (all of them up to N = 161).

    Example:
    >>> default_chunk_size(128), default_chunk_size(1024), default_chunk_size(4096)
    (256, 4, 1)
    """
    return max(1, CHUNK_ELEMENTS // max(n * n, 1))


@functools.cache
def _fused_slopes():
    """`slopes` compiled as one XLA computation on JAX (under `jax.jit` it is inlined); as is on PyTorch."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(slopes)
    return slopes


def huber_sum(teacher, student, delta, eps, chunk_size):
    """Σ over all N³ triples of huber(ψ_A(student) − ψ_A(teacher)) in float64, differentiable in `student`.

    For batches of known size (JAX and PyTorch always have them). Every chunk
    has the same shape (the last one repeats a vertex with weight 0), which
    XLA needs.

    Args:
        teacher, student: `(N, D_t)` and `(N, D_s)` float32 matrices.
        delta: The Huber threshold.
        eps: Squared differences at or below `eps` have no direction.
        chunk_size: Vertices per chunk, or `None` for `default_chunk_size`.

    Example:
    >>> from rkd_keras.losses.base import in_float64
    >>> teacher = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    >>> total = in_float64(lambda t, s: huber_sum(t, s, delta=1.0, eps=1e-12, chunk_size=4), teacher, 2 * teacher + 1)
    >>> float(total) < 1e-9  # the same angles: every Huber term is 0
    True
    """
    n = student.shape[0]
    if n == 0:  # no angles; the product keeps the (empty) gradient
        return 0.0 * keras.ops.cast(keras.ops.sum(student), "float64")
    teacher_gram, teacher_norm = (keras.ops.stop_gradient(f) for f in factors(teacher, eps))
    student_gram, student_norm = factors(student, eps)
    size = min(default_chunk_size(n) if chunk_size is None else int(chunk_size), n)
    num_chunks = -(-n // size)
    fused_slopes = _fused_slopes()

    @keras.ops.custom_gradient
    def total_and_gradient(gram, norm):
        def chunk(index, carry):
            total, dot_gradient_sum, row_sums, norm_gradients = carry
            start = index * size
            vertices = start + keras.ops.arange(size, dtype="int32")
            weight = keras.ops.cast(vertices < n, "float32")
            vertices = keras.ops.minimum(vertices, n - 1)
            slope, student_cosines, row_losses = fused_slopes(
                gram, norm, teacher_gram, teacher_norm, vertices, weight, delta
            )
            terms = chunk_terms(slope, student_cosines, row_losses, norm, vertices)
            return (
                total + terms[0],
                dot_gradient_sum + terms[1],
                keras.ops.slice_update(row_sums, (start, 0), terms[2]),
                keras.ops.slice_update(norm_gradients, (start, 0), terms[3]),
            )

        rows = keras.ops.zeros((num_chunks * size, n), "float32")
        total, dot_gradient_sum, row_sums, norm_gradients = keras.ops.fori_loop(
            0, num_chunks, chunk, (keras.ops.zeros((), "float64"), keras.ops.zeros_like(norm), rows, rows)
        )
        gradients = keras.ops.cast(gram_gradient(dot_gradient_sum, row_sums[:n]), "float64"), norm_gradients[:n]

        def grad(*args, upstream=None):
            if upstream is None:  # TensorFlow and JAX pass the upstream gradient; PyTorch passes it by name
                (upstream,) = args
            return upstream * gradients[0], keras.ops.cast(upstream, "float32") * gradients[1]

        return total, grad

    return total_and_gradient(student_gram, student_norm)
