"""Tile planes for Winograd's F(4x4, 3x3) (``winograd_f4.py``): where each pixel of a channel
goes among the tiles, and the moves between a channel's planes of pixels and its tile planes.

A tile plane is an array over the tiles p (level, tile row a, tile column b, image m: the
order of V and M, ``winograd_f2.tiles``), one per place in a tile, so that a step of a
transform is one loop over all tiles of all levels. Tile p's 6x6 input window has the pixel
rows 4a - 1 .. 4a + 4 and the columns 4b - 1 .. 4b + 4 of its image; its window row i (0..5)
is kept as four planes X[j, i*P + p], the columns 4b + j (j = 0..3). The window's first and
last columns, 4b - 1 and 4b + 4, are the neighbouring tiles' X[3, i*P + p - n] and
X[0, i*P + p + n] (the images are innermost), where the neighbours are in the same tile row
(``_edges``; past a level's left and right edges they are the padding, zeros). Window rows 0
and 5, pixel rows 4a - 1 and 4a + 4, are also rows 4 and 1 of the tile rows above and below:
those rows of pixels are written twice. A 4x4 block of outputs is kept the same way, without
the neighbours and the copies: its row u (0..3) at Y[v, u*P + p] for the columns 4b + v.
"""

from __future__ import annotations

import numpy as np
from numba import njit, uint64


@njit(cache=True, nogil=True)
def _edges(table, n, P):
    """(6P,) twice: whether tile p has a neighbour to its left (b > 0) and to its right (b <
    tile columns - 1), at i*P + p for each of the six window rows i (the same for all)."""
    left, right = np.empty(6 * P, np.bool_), np.empty(6 * P, np.bool_)
    for level in range(table.shape[0]):
        tile, th, tw = table[level, 3], table[level, 4], table[level, 5]
        for i in range(6):
            p = i * P + tile  # tile (a, b, m) of the level, in order
            for _ in range(th):
                for b in range(tw):
                    for _ in range(n):
                        left[p], right[p] = b > 0, b < tw - 1
                        p += 1
    return left, right


@njit(cache=True, nogil=True)
def _window_places(table, n, P, o):
    """Where each row r of a level's images goes among the input windows' rows: places[level,
    r] = (first, second) at o + i*P + tile + a*tw*n for row i of tile row a (o: where the
    planes start in their arrays): r = 4a - 1 + i with i in 1..4, and also row 0 of tile row
    a + 1 (i = 4) or row 5 of tile row a - 1 (i = 1); second is -1 for the other rows."""
    places = np.empty((table.shape[0], _largest(table, 0), 2), np.int64)
    for level in range(table.shape[0]):
        H, tile, th, tw = table[level, 0], table[level, 3], table[level, 4], table[level, 5]
        for r in range(H):
            a, u = r // 4, r % 4
            places[level, r, 0] = o + (u + 1) * P + tile + a * tw * n
            places[level, r, 1] = -1
            if u == 3 and a + 1 < th:
                places[level, r, 1] = o + tile + (a + 1) * tw * n
            if u == 0 and a > 0:
                places[level, r, 1] = o + 5 * P + tile + (a - 1) * tw * n
    return places


@njit(cache=True, nogil=True)
def _block_places(table, n, P):
    """``_window_places`` for the output's 4x4 blocks: row r is row r % 4 of tile row r // 4,
    at (r % 4)*P + tile + (r // 4)*tw*n, and has no second place."""
    places = np.empty((table.shape[0], _largest(table, 0), 2), np.int64)
    for level in range(table.shape[0]):
        H, tile, tw = table[level, 0], table[level, 3], table[level, 5]
        for r in range(H):
            places[level, r, 0] = (r % 4) * P + tile + (r // 4) * tw * n
            places[level, r, 1] = -1
    return places


@njit(cache=True, nogil=True)
def _largest(table, column):
    """The largest value in a column of the tile table (0: H, 1: W)."""
    largest = 0
    for level in range(table.shape[0]):
        largest = max(largest, table[level, column])
    return largest


@njit(cache=True, nogil=True)
def scratch8(table, dtype):
    """The scratch T of the moves below: room for eight of the table's largest planes."""
    size = 0
    for level in range(table.shape[0]):
        size = max(size, table[level, 0] * table[level, 1])
    return np.empty(8 * size, dtype)


# The moves transpose: a plane of pixels has one image, a tile plane has the images innermost.
# Eight images at a time they go through T (T[8k + g] = pixel k of image g), a transposition
# that LLVM vectorises as 8x8 blocks in registers, and then each pixel's eight values are one
# run of a tile plane too, moved as one vector: for the heads' input 0.04 ms, against 0.27
# pixel by pixel. Past a multiple of eight the last eight images overlap the ones before
# (moving an image twice writes the same values twice); fewer than eight (inference: one
# image) move each row phase by phase, its columns 4b + j to one tile plane's run of tiles.


@njit(cache=True, nogil=True)
def _groups_of_eight(n):
    """How many groups of eight images cover n images (none below eight)."""
    return (n + 7) // 8 if n >= 8 else 0


@njit(cache=True, nogil=True)
def _eight_images(x, s, ms, HW, T):
    """T[8k + g] = x[s + g*ms + k]: pixel k of eight images, the images innermost."""
    x0, x1, x2, x3 = x[s:], x[s + ms:], x[s + 2 * ms:], x[s + 3 * ms:]
    x4, x5, x6, x7 = x[s + 4 * ms:], x[s + 5 * ms:], x[s + 6 * ms:], x[s + 7 * ms:]
    for k in range(HW):
        T[8 * k], T[8 * k + 1], T[8 * k + 2], T[8 * k + 3] = x0[k], x1[k], x2[k], x3[k]
        T[8 * k + 4], T[8 * k + 5], T[8 * k + 6], T[8 * k + 7] = x4[k], x5[k], x6[k], x7[k]


@njit(cache=True, nogil=True)
def _eight_images_back(T, HW, x, s, ms):
    """The inverse of ``_eight_images``: x[s + g*ms + k] = T[8k + g]."""
    x0, x1, x2, x3 = x[s:], x[s + ms:], x[s + 2 * ms:], x[s + 3 * ms:]
    x4, x5, x6, x7 = x[s + 4 * ms:], x[s + 5 * ms:], x[s + 6 * ms:], x[s + 7 * ms:]
    for k in range(HW):
        x0[k], x1[k], x2[k], x3[k] = T[8 * k], T[8 * k + 1], T[8 * k + 2], T[8 * k + 3]
        x4[k], x5[k], x6[k], x7[k] = T[8 * k + 4], T[8 * k + 5], T[8 * k + 6], T[8 * k + 7]


@njit(cache=True, nogil=True)
def _load8(a, s):
    """a[s], ..., a[s + 7] as a tuple, s unsigned (see ``_copy8``)."""
    return (a[s], a[s + uint64(1)], a[s + uint64(2)], a[s + uint64(3)], a[s + uint64(4)],
            a[s + uint64(5)], a[s + uint64(6)], a[s + uint64(7)])


@njit(cache=True, nogil=True)
def _copy8(a, s, b, d, add):
    """b[d:d + 8] = a[s:s + 8], or += if add, as one vector: all loads first, and unsigned
    indices, for which Numba leaves out its handling of negative ones (with it LLVM moved the
    eight one by one; views of the eight cost their bounds: the heads' input 0.06 -> 0.04 ms)."""
    s, d = uint64(s), uint64(d)
    u = _load8(a, s)
    if add:
        v = _load8(b, d)
        for k in range(8):
            b[d + uint64(k)] = u[k] + v[k]
    else:
        for k in range(8):
            b[d + uint64(k)] = u[k]


@njit(cache=True, nogil=True)
def _planes_to_tiles(x, cs, ms, c, n, table, places, X, T):
    """Channel c of x (flat; channel stride cs, image strides ms) into the tile planes X (4,
    .): pixel (r, 4b + j) of image m to X[j, q + b*n + m] for each place q of row r (places:
    ``_window_places`` or ``_block_places``). The places no pixel reaches are left as they
    are. T: ``scratch8``."""
    E, Xf = X.shape[1], X.reshape(-1)
    for level in range(table.shape[0]):
        H, W, start = table[level, 0], table[level, 1], table[level, 2]
        pixels = start + c * cs
        for g in range(_groups_of_eight(n)):
            m0 = min(8 * g, n - 8)
            _eight_images(x, pixels + m0 * ms[level], ms[level], H * W, T)
            for r in range(H):
                first, second = places[level, r, 0], places[level, r, 1]
                for s in range(W):
                    d = (s % 4) * E + (s // 4) * n + m0
                    _copy8(T, (r * W + s) * 8, Xf, d + first, False)
                    if second >= 0:
                        _copy8(T, (r * W + s) * 8, Xf, d + second, False)
        for m in range(n if n < 8 else 0):  # column 4b + j of each row, phase by phase
            for r in range(H):
                first, second = places[level, r, 0], places[level, r, 1]
                row = pixels + m * ms[level] + r * W
                for j in range(4):
                    d = j * E + m + first
                    for b in range((W - j + 3) // 4):
                        Xf[d + b * n] = x[row + 4 * b + j]
                    if second >= 0:
                        d = j * E + m + second
                        for b in range((W - j + 3) // 4):
                            Xf[d + b * n] = x[row + 4 * b + j]


@njit(cache=True, nogil=True)
def _tiles_to_planes(X, places, n, table, T, c, x, cs, ms):
    """The adjoint of ``_planes_to_tiles``: channel c of x (strides cs, ms) from the tile
    planes X, a pixel with two places the sum of both."""
    E, Xf = X.shape[1], X.reshape(-1)
    for level in range(table.shape[0]):
        H, W, start = table[level, 0], table[level, 1], table[level, 2]
        pixels = start + c * cs
        for g in range(_groups_of_eight(n)):
            m0 = min(8 * g, n - 8)
            for r in range(H):
                first, second = places[level, r, 0], places[level, r, 1]
                for s in range(W):
                    d = (s % 4) * E + (s // 4) * n + m0
                    _copy8(Xf, d + first, T, (r * W + s) * 8, False)
                    if second >= 0:
                        _copy8(Xf, d + second, T, (r * W + s) * 8, True)
            _eight_images_back(T, H * W, x, pixels + m0 * ms[level], ms[level])
        for m in range(n if n < 8 else 0):  # column 4b + j of each row, phase by phase
            for r in range(H):
                first, second = places[level, r, 0], places[level, r, 1]
                row = pixels + m * ms[level] + r * W
                for j in range(4):
                    d = j * E + m + first
                    for b in range((W - j + 3) // 4):
                        x[row + 4 * b + j] = Xf[d + b * n]
                    if second >= 0:
                        d = j * E + m + second
                        for b in range((W - j + 3) // 4):
                            x[row + 4 * b + j] += Xf[d + b * n]
