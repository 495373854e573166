"""The compiled (numba) kernels of :mod:`.gbt`: tree growth, split search, scikit-learn's xorshift
generator, its introsort (replayed for rows with equal values) and pairwise sums, prediction.

Each kernel follows the scikit-learn source named in :mod:`.gbt`'s docstring operation by operation.
Every kernel is defined only when numba is importable (``_numba`` is None otherwise; :func:`.gbt.fit_gbt`
then names the fix).
"""

from __future__ import annotations

import numpy as np

try:  # numba is a runtime dependency; the import is guarded only to name the fix if it is missing
    import numba as _numba
    from numba import njit
except ImportError:  # pragma: no cover - exercised only in a broken install
    _numba = None


if _numba is not None:

    @njit(cache=True)
    def _rand_int(state, low, high):
        """scikit-learn's ``rand_int``: ``low + our_rand_r(state) % (high - low)`` (xorshift32)."""
        s = state[0]
        if s == 0:
            s = 1  # DEFAULT_SEED
        s ^= (s << 13) & 0xFFFFFFFF
        s ^= s >> 17
        s ^= (s << 5) & 0xFFFFFFFF
        state[0] = s
        return low + (s % 2147483648) % (high - low)

    @njit(cache=True)
    def _neg_gradient(raw, y, binary, out):
        """``out (T, N)`` = minus the gradient of the half multinomial (or binomial) deviance."""
        n, t_count = raw.shape
        if binary:
            for i in range(n):
                r = raw[i, 0]
                yt = float(y[i])
                if r > -37.0:
                    e = np.exp(-r)
                    grad = ((1.0 - yt) - yt * e) / (1.0 + e)
                else:
                    e = np.exp(r)
                    grad = e - yt
                out[0, i] = -grad
            return
        p = np.empty(t_count)
        for i in range(n):
            mx = raw[i, 0]
            for k in range(1, t_count):
                if raw[i, k] > mx:
                    mx = raw[i, k]
            total = 0.0
            for k in range(t_count):
                p[k] = np.exp(raw[i, k] - mx)
                total += p[k]
            for k in range(t_count):
                pk = p[k] / total
                out[k, i] = -(pk - (1.0 if y[i] == k else 0.0))

    @njit(cache=True)
    def _update_left(y, samples, start, end, pos, new_pos, sum_left, sum_total, n_node):
        """The criterion's ``update``: move ``samples[pos:new_pos]`` to the left; returns the new
        (sum_left, n_left), accumulated forward, or backward from ``end`` after a long jump."""
        if (new_pos - pos) <= (end - new_pos):
            n_left = float(pos - start)
            for q in range(pos, new_pos):
                sum_left += y[samples[q]]
                n_left += 1.0
        else:
            sum_left = sum_total
            n_left = n_node
            for q in range(end - 1, new_pos - 1, -1):
                sum_left -= y[samples[q]]
                n_left -= 1.0
        return sum_left, n_left

    @njit(cache=True)
    def _build_tree(
        x, order, sorted_x, has_dups, inv, y, seed, max_depth, split, feature, threshold, count, impurity, leaf_of
    ):
        """One regression tree on ``y (N,)``, grown as scikit-learn's best splitter and depth-first
        builder grow it (see the module docstring). Fills the heap arrays and ``leaf_of (N,)``."""
        n, d = x.shape
        ft = np.float32(1e-7)
        eps = 2.220446049250313e-16
        idx = order.copy()  # (D, N) per feature: node rows in sorted order
        vals = sorted_x.copy()  # (D, N) their values, kept alongside
        tmpv = np.empty(n, dtype=np.float32)
        tie_vals = np.empty(n, dtype=np.float32)
        cand_pos = np.empty(n, dtype=np.int64)
        cand_sum = np.empty(n)
        cand_n = np.empty(n)
        cand_proxy = np.empty(n)
        samples = np.arange(n).astype(np.int32)  # the splitter's sample order (sums follow it)
        tmp = np.empty(n, dtype=np.int32)
        left_flag = np.zeros(n, dtype=np.bool_)
        features = np.arange(d)
        constant_features = np.arange(d)
        state = np.array([seed], dtype=np.int64)
        heap = split.shape[0]
        st_start = np.empty(heap, dtype=np.int64)
        st_end = np.empty(heap, dtype=np.int64)
        st_depth = np.empty(heap, dtype=np.int64)
        st_heap = np.empty(heap, dtype=np.int64)
        st_nconst = np.empty(heap, dtype=np.int64)
        st_imp = np.empty(heap)
        top = 0
        st_start[0] = 0
        st_end[0] = n
        st_depth[0] = 0
        st_heap[0] = 0
        st_nconst[0] = 0
        st_imp[0] = 0.0
        top = 1
        first = True
        while top > 0:
            top -= 1
            start = st_start[top]
            end = st_end[top]
            depth = st_depth[top]
            h = st_heap[top]
            n_known = st_nconst[top]
            imp = st_imp[top]
            n_node_i = end - start
            n_node = float(n_node_i)
            # criterion.init over the node's samples, in the splitter's order
            sum_total = 0.0
            sq_total = 0.0
            for q in range(start, end):
                v = y[samples[q]]
                sum_total += v
                sq_total += v * v
            if first:
                imp = sq_total / n_node - (sum_total / n_node) ** 2.0
                first = False
            is_leaf = depth >= max_depth or n_node_i < 2 or imp <= eps
            count[h] = n_node
            impurity[h] = imp
            best_pos = end
            best_f = -1
            best_thr = 0.0
            n_total = n_known
            if not is_leaf:
                # ---- node_split: features in scikit-learn's random order (Fisher-Yates)
                best_proxy = -np.inf
                f_i = d
                n_visited = 0
                n_found = 0
                n_drawn = 0
                last_sorted = -1
                while f_i > n_total and (n_visited < d or n_visited <= n_found + n_drawn):
                    n_visited += 1
                    f_j = _rand_int(state, n_drawn, f_i - n_found)
                    if f_j < n_known:
                        tmpf = features[n_drawn]
                        features[n_drawn] = features[f_j]
                        features[f_j] = tmpf
                        n_drawn += 1
                        continue
                    f_j += n_found
                    cur = features[f_j]
                    # sort_samples_and_feature_values: the node's rows by this feature. With
                    # distinct values the sorted order is unique: our presorted rows. With equal
                    # values it depends on the splitter's previous order: run its introsort on it.
                    tied = False
                    if has_dups[cur]:
                        for q in range(start + 1, end):
                            if vals[cur, q] == vals[cur, q - 1]:
                                tied = True
                                break
                    if tied:
                        if last_sorted >= 0:
                            for q in range(start, end):
                                samples[q] = idx[last_sorted, q]
                        for q in range(start, end):
                            tie_vals[q] = x[samples[q], cur]
                        _introsort3(tie_vals, samples, start, end - start)
                        last_sorted = -1  # samples now hold the splitter's order
                        rows = samples
                        fv = tie_vals
                    else:
                        if vals[cur, end - 1] != vals[cur, start]:
                            last_sorted = cur
                        # (all values equal: the introsort moves nothing, the order stays)
                        rows = idx[cur]
                        fv = vals[cur]
                    if fv[end - 1] <= fv[start] + ft:
                        tmpf = features[f_j]
                        features[f_j] = features[n_total]
                        features[n_total] = tmpf
                        n_found += 1
                        n_total += 1
                        continue
                    f_i -= 1
                    tmpf = features[f_i]
                    features[f_i] = features[f_j]
                    features[f_j] = tmpf
                    # evaluate every split of this feature. Pass 1: the criterion's running sums
                    # at each candidate position (sequential, as scikit-learn adds them) and a
                    # cheap proxy (reciprocal table, within a few ulp of the exact one). Pass 2:
                    # the exact proxy ``S_l^2 / n_l + S_r^2 / n_r`` only where the cheap one is
                    # within 1e-12 of its maximum, first strict maximum wins (the exact answer:
                    # no other candidate can reach the maximum).
                    pos = start
                    sum_left = 0.0
                    n_left = 0.0
                    m = 0
                    a_max = 0.0
                    p = start
                    while p < end:
                        p += 1
                        while p < end and fv[p] <= fv[p - 1] + ft:
                            p += 1
                        if p == end:
                            break
                        if (p - pos) <= (end - p):  # the criterion's forward update
                            for q in range(pos, p):
                                sum_left += y[rows[q]]
                                n_left += 1.0
                        else:
                            sum_left, n_left = _update_left(y, rows, start, end, pos, p, sum_left, sum_total, n_node)
                        pos = p
                        sr = sum_total - sum_left
                        a = sum_left * sum_left * inv[p - start] + sr * sr * inv[end - p]
                        # keep only candidates that can still reach the final cut: one below
                        # (1 - 1e-12) x the running maximum is below it for good
                        if a >= a_max * (1.0 - 1e-12):
                            cand_pos[m] = p
                            cand_sum[m] = sum_left
                            cand_n[m] = n_left
                            cand_proxy[m] = a
                            m += 1
                            if a > a_max:
                                a_max = a
                    cut = a_max * (1.0 - 1e-12)
                    best_c = -1
                    for c in range(m):
                        if cand_proxy[c] >= cut:
                            sl = cand_sum[c]
                            sr = sum_total - sl
                            nl = cand_n[c]
                            proxy = sl * sl / nl + sr * sr / (n_node - nl)
                            if proxy > best_proxy:
                                best_proxy = proxy
                                best_c = c
                    if best_c >= 0:
                        p = cand_pos[best_c]
                        best_pos = p
                        best_f = cur
                        best_thr = np.float64(fv[p - 1]) / 2.0 + np.float64(fv[p]) / 2.0
                # the splitter leaves samples sorted by the last feature it sorted
                if last_sorted >= 0:  # else the tied path left them in place
                    for q in range(start, end):
                        samples[q] = idx[last_sorted, q]
                # restore / record constant features as the splitter does
                for q in range(n_known):
                    features[q] = constant_features[q]
                for q in range(n_known, n_known + n_found):
                    constant_features[q] = features[q]
                improvement = 0.0
                imp_left = 0.0
                imp_right = 0.0
                if best_pos < end:
                    # partition_samples_final: in-place two-pointer partition by the threshold
                    p = start
                    pe = end
                    while p < pe:
                        if x[samples[p], best_f] <= best_thr:
                            p += 1
                        else:
                            pe -= 1
                            tmpi = samples[p]
                            samples[p] = samples[pe]
                            samples[pe] = tmpi
                    # criterion.reset(); update(best_pos); children_impurity(); impurity_improvement()
                    sum_left, n_left = _update_left(y, samples, start, end, start, best_pos, 0.0, sum_total, n_node)
                    n_right = n_node - n_left
                    sum_right = sum_total - sum_left
                    sq_left = 0.0
                    for q in range(start, best_pos):
                        v = y[samples[q]]
                        sq_left += v * v
                    sq_right = sq_total - sq_left
                    imp_left = sq_left / n_left - (sum_left / n_left) ** 2.0
                    imp_right = sq_right / n_right - (sum_right / n_right) ** 2.0
                    improvement = (n_node / float(n)) * (
                        imp - (n_right / n_node * imp_right) - (n_left / n_node * imp_left)
                    )
                is_leaf = best_pos >= end or improvement + eps < 0.0
            if is_leaf:
                for q in range(start, end):
                    leaf_of[samples[q]] = h
                continue
            split[h] = True
            feature[h] = best_f
            threshold[h] = best_thr
            # stable partition of every feature's rows (and values): left rows first, in order;
            # not needed when the children are leaves by depth
            if depth + 1 < max_depth:
                for q in range(start, end):
                    left_flag[samples[q]] = q < best_pos
                for j in range(d):
                    a = start
                    b = 0
                    for q in range(start, end):  # branch-free: write both, advance one
                        r = idx[j, q]
                        v = vals[j, q]
                        go_left = left_flag[r]
                        idx[j, a] = r
                        vals[j, a] = v
                        tmp[b] = r
                        tmpv[b] = v
                        a += go_left
                        b += 1 - go_left
                    for q in range(b):
                        idx[j, a + q] = tmp[q]
                        vals[j, a + q] = tmpv[q]
            # push right, then left (popped first): depth-first, left to right
            st_start[top] = best_pos
            st_end[top] = end
            st_depth[top] = depth + 1
            st_heap[top] = 2 * h + 2
            st_nconst[top] = n_total
            st_imp[top] = imp_right
            top += 1
            st_start[top] = start
            st_end[top] = best_pos
            st_depth[top] = depth + 1
            st_heap[top] = 2 * h + 1
            st_nconst[top] = n_total
            st_imp[top] = imp_left
            top += 1

    @njit(cache=True)
    def _pairwise_block(a, lo, n):
        """NumPy's pairwise-sum base case (n <= 128): eight interleaved partial sums."""
        if n < 8:
            res = 0.0
            for i in range(lo, lo + n):
                res += a[i]
            return res
        r = np.empty(8)
        for j in range(8):
            r[j] = a[lo + j]
        stop = n - n % 8
        for i in range(8, stop, 8):
            for j in range(8):
                r[j] += a[lo + i + j]
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        for i in range(stop, n):
            res += a[lo + i]
        return res

    @njit(cache=True)
    def _pairwise_sum(a, lo, n):
        """NumPy's pairwise summation of ``a[lo:lo + n]`` (``DOUBLE_pairwise_sum``), bit for bit:
        blocks of at most 128 summed by :func:`_pairwise_block`, halves (rounded down to a
        multiple of 8) added recursively, here with an explicit stack."""
        if n <= 128:
            return _pairwise_block(a, lo, n)
        los = np.empty(64, dtype=np.int64)
        ns = np.empty(64, dtype=np.int64)
        phase = np.zeros(64, dtype=np.int64)
        left = np.zeros(64)
        los[0] = lo
        ns[0] = n
        phase[0] = 0
        sp = 1
        ret = 0.0
        while sp > 0:
            f = sp - 1
            if ns[f] <= 128:
                ret = _pairwise_block(a, los[f], ns[f])
                sp -= 1
                # deliver ret to the parents
                while sp > 0:
                    f = sp - 1
                    if phase[f] == 0:
                        left[f] = ret
                        phase[f] = 1
                        n2 = ns[f] // 2
                        n2 -= n2 % 8
                        los[sp] = los[f] + n2
                        ns[sp] = ns[f] - n2
                        phase[sp] = 0
                        sp += 1
                        break
                    ret = left[f] + ret
                    sp -= 1
            else:
                n2 = ns[f] // 2
                n2 -= n2 % 8
                los[sp] = los[f]
                ns[sp] = n2
                phase[sp] = 0
                sp += 1
        return ret

    @njit(cache=True)
    def _swap(values, indices, i, j):
        tv = values[i]
        values[i] = values[j]
        values[j] = tv
        ti = indices[i]
        indices[i] = indices[j]
        indices[j] = ti

    @njit(cache=True)
    def _median3(values, off, n):
        a = values[off]
        b = values[off + n // 2]
        c = values[off + n - 1]
        if a < b:
            if b < c:
                return b
            elif a < c:
                return c
            return a
        elif b < c:
            if a < c:
                return a
            return c
        return b

    @njit(cache=True)
    def _sift_down(values, indices, off, start, end):
        root = start
        while True:
            child = root * 2 + 1
            maxind = root
            if child < end and values[off + maxind] < values[off + child]:
                maxind = child
            if child + 1 < end and values[off + maxind] < values[off + child + 1]:
                maxind = child + 1
            if maxind == root:
                break
            _swap(values, indices, off + root, off + maxind)
            root = maxind

    @njit(cache=True)
    def _heapsort(values, indices, off, n):
        start = (n - 2) // 2
        end = n
        while True:
            _sift_down(values, indices, off, start, end)
            if start == 0:
                break
            start -= 1
        end = n - 1
        while end > 0:
            _swap(values, indices, off, off + end)
            _sift_down(values, indices, off, 0, end)
            end = end - 1

    @njit(cache=True)
    def _introsort3(values, indices, off, n):
        """scikit-learn's ``simultaneous_sort(..., use_three_way_partition=True)`` (utils/_sorting.pyx):
        introsort, median-of-3 pivot, 3-way partition, heapsort past depth ``2 log2 n``, insertion
        sort below 16 -- the same swaps, so rows with equal values end in the same order. The
        recursion on the left part is an explicit stack (disjoint ranges: order does not matter)."""
        if n == 0:
            return
        maxd0 = 2 * int(np.log2(float(n)))
        st_off = np.empty(maxd0 + 2, dtype=np.int64)
        st_n = np.empty(maxd0 + 2, dtype=np.int64)
        st_d = np.empty(maxd0 + 2, dtype=np.int64)
        st_off[0] = off
        st_n[0] = n
        st_d[0] = maxd0
        sp = 1
        while sp > 0:
            sp -= 1
            o = st_off[sp]
            m = st_n[sp]
            md = st_d[sp]
            done = False
            while m > 15:
                if md <= 0:
                    _heapsort(values, indices, o, m)
                    done = True
                    break
                md -= 1
                pivot = _median3(values, o, m)
                i = 0
                lft = 0
                r = m
                while i < r:
                    if values[o + i] < pivot:
                        _swap(values, indices, o + i, o + lft)
                        i += 1
                        lft += 1
                    elif values[o + i] > pivot:
                        r -= 1
                        _swap(values, indices, o + i, o + r)
                    else:
                        i += 1
                st_off[sp] = o
                st_n[sp] = lft
                st_d[sp] = md
                sp += 1
                o += r
                m -= r
            if not done:
                for i in range(1, m):  # insertion sort
                    temp_val = values[o + i]
                    temp_idx = indices[o + i]
                    j = i
                    while j > 0 and values[o + j - 1] > temp_val:
                        values[o + j] = values[o + j - 1]
                        indices[o + j] = indices[o + j - 1]
                        j -= 1
                    values[o + j] = temp_val
                    indices[o + j] = temp_idx

    @njit(cache=True)
    def _preorder(heap):
        """Heap ids in depth-first preorder (root, left subtree, right subtree)."""
        out = np.empty(heap, dtype=np.int64)
        stack = np.empty(heap, dtype=np.int64)
        stack[0] = 0
        sp = 1
        m = 0
        while sp > 0:
            sp -= 1
            h = stack[sp]
            out[m] = h
            m += 1
            if 2 * h + 2 < heap:
                stack[sp] = 2 * h + 2
                stack[sp + 1] = 2 * h + 1
                sp += 2
        return out

    @njit(cache=True)
    def _leaf(x_row, split, feature, threshold, max_depth):
        h = 0
        for _ in range(max_depth):
            if not split[h]:
                break
            if x_row[feature[h]] <= threshold[h]:
                h = 2 * h + 1
            else:
                h = 2 * h + 2
        return h

    @njit(cache=True, nogil=True)
    def _fit_trees(
        lo,
        hi,
        x,
        order,
        sorted_x,
        has_dups,
        inv,
        grad,
        y,
        seeds,
        max_depth,
        factor,
        learning_rate,
        binary,
        split,
        feature,
        threshold,
        value,
        importance,
        raw,
        ex,
        raw_eval,
    ):
        """Grow trees ``lo..hi-1`` of one stage, set their Newton leaf values, add them to the raw
        scores of the training rows and of ``ex``, and record their importances. Releases the GIL:
        the stage's trees are independent, so threads run disjoint ranges side by side."""
        t_count, n = grad.shape
        d = x.shape[1]
        heap = split.shape[1]
        preorder = _preorder(heap)
        for k in range(lo, hi):
            count = np.zeros(heap)
            impurity = np.zeros(heap)
            leaf_of = np.empty(n, dtype=np.int64)
            _build_tree(
                x,
                order,
                sorted_x,
                has_dups,
                inv,
                grad[k],
                seeds[k],
                max_depth,
                split[k],
                feature[k],
                threshold[k],
                count,
                impurity,
                leaf_of,
            )
            # Newton step per leaf, as _update_terminal_regions: np.average over the leaf's rows in
            # index order (NumPy's pairwise sum), numerator times (K-1)/K, p = y - r
            buf_r = np.empty(n)
            buf_h = np.empty(n)
            fill = np.zeros(heap + 1, dtype=np.int64)
            for i in range(n):
                fill[leaf_of[i] + 1] += 1
            for h in range(heap):
                fill[h + 1] += fill[h]
            first = fill[:heap].copy()
            for i in range(n):
                h = leaf_of[i]
                r = grad[k, i]
                yk = (1.0 if y[i] == 1 else 0.0) if binary else (1.0 if y[i] == k else 0.0)
                pr = yk - r
                buf_r[fill[h]] = r
                buf_h[fill[h]] = pr * (1.0 - pr)
                fill[h] += 1
            for h in range(heap):
                m = fill[h] - first[h]
                if split[k, h] or m == 0:
                    continue
                numerator = _pairwise_sum(buf_r, first[h], m) / m
                numerator *= factor
                denominator = _pairwise_sum(buf_h, first[h], m) / m
                if abs(denominator) < 1e-150:
                    value[k, h] = 0.0
                else:
                    value[k, h] = numerator / denominator
            for i in range(n):
                raw[i, k] += learning_rate * value[k, leaf_of[i]]
            for i in range(ex.shape[0]):
                raw_eval[i, k] += learning_rate * value[k, _leaf(ex[i], split[k], feature[k], threshold[k], max_depth)]
            # compute_feature_importances(normalize=False), nodes in scikit-learn's id order
            # (depth-first preorder), so the per-feature sums add in the same order
            for h in preorder:
                if split[k, h]:
                    left = 2 * h + 1
                    right = 2 * h + 2
                    importance[k, feature[k, h]] += (
                        count[h] * impurity[h] - count[left] * impurity[left] - count[right] * impurity[right]
                    )
            for j in range(d):
                importance[k, j] /= count[0]

    @njit(cache=True)
    def _apply_all(x, split, feature, threshold, value, max_depth, learning_rate, raw):
        n_stages, t_count, _ = split.shape
        for s in range(n_stages):
            for k in range(t_count):
                for i in range(x.shape[0]):
                    raw[i, k] += (
                        learning_rate * value[s, k, _leaf(x[i], split[s, k], feature[s, k], threshold[s, k], max_depth)]
                    )
