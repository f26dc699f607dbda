/* One whole training step of plain SGD for a unidirectional stack of Elman (ReLU or tanh) or LSTM
 * layers read at its last step, in C: the batch, forward, cross-entropy, backward and the update.
 *
 * Why C: on dlw-rnn-a (batch 100, 28 steps, 1x100) the step is some 60 GEMMs and as many small
 * elementwise passes. TorchScript pays a few microseconds of dispatch for each of its ~150 ops,
 * a third of the step; here the elementwise work is plain loops and the GEMMs go straight to
 * the BLAS that torch itself calls (its Fortran ``sgemm_``, MKL on x86 builds, whose pointer
 * native.py passes in), so the step is its GEMMs and little else.
 *
 * The arithmetic is that of models/fast_step.py and of autograd through torch.nn.LSTM (same GEMMs),
 * though not bit for bit: the bias is added after the step's GEMM rather than before, and exp is
 * our own. tests/test_native_step.py checks the losses and weights against both.
 *
 * Layout: everything row-major and time-major, buffers (T, B, .) and states (B, H).
 * Compiled by native.py with the system C compiler on first use; no Python headers needed. */

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The Fortran BLAS takes its integers by pointer: 32-bit in MKL's LP64 interface, 64-bit in ILP64.
 * Each is passed as a 64-bit integer, whose first 4 bytes (little-endian) are the same value: right
 * whichever interface torch was built with. */
typedef void (*sgemm_fn)(const char *, const char *, const void *, const void *, const void *, const float *,
                         const float *, const void *, const float *, const void *, const float *, float *,
                         const void *);
static sgemm_fn sgemm;

void rnnlab_set_sgemm(void *fn) { sgemm = (sgemm_fn)fn; }

/* Row-major c (m, n) = a' b' + beta c, with a' = a (m, k), or its transpose if a_t (a stored (k, m));
 * b' = b (k, n), or its transpose if b_t (b stored (n, k)). The Fortran BLAS is column-major, and a
 * row-major matrix is its column-major transpose: so ask for c^T = b'^T a'^T. */
static void gemm(int m, int n, int k, const float *a, int a_t, const float *b, int b_t, float beta, float *c) {
    const float one = 1.0f;
    const int64_t m_ = m, n_ = n, k_ = k, lda = a_t ? m : k, ldb = b_t ? k : n, ldc = n;
    sgemm(b_t ? "T" : "N", a_t ? "T" : "N", &n_, &m_, &k_, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

/* A step's work split over torch's OpenMP threads by sequence (rows of the batch): each row is one
 * thread's alone. Run through the same libgomp team as torch's own parallel regions (GOMP_parallel,
 * whose address native.py passes in), never a second pool: a step's GEMMs keep those threads busy
 * already. Without it, one thread does all the rows. */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_query_fn)(void);
static gomp_parallel_fn gomp_parallel;
static omp_query_fn omp_thread_num, omp_num_threads;

void rnnlab_set_openmp(void *parallel, void *thread_num, void *num_threads) {
    gomp_parallel = (gomp_parallel_fn)parallel;
    omp_thread_num = (omp_query_fn)thread_num;
    omp_num_threads = (omp_query_fn)num_threads;
}

/* fn(job, first, last) on each thread's share [first, last) of B rows: in one parallel region of
 * torch's team where the work (B x H) is worth the fork, else all rows on the calling thread. */
typedef void (*rows_fn)(const void *job, int first, int last);
struct rows_call {
    rows_fn fn;
    const void *job;
    int B;
};

static void rows_share(void *arg) {
    const struct rows_call *call = arg;
    const int id = omp_thread_num ? omp_thread_num() : 0, count = omp_num_threads ? omp_num_threads() : 1;
    const int first = (int)((long)call->B * id / count), last = (int)((long)call->B * (id + 1) / count);
    if (last > first) call->fn(call->job, first, last);
}

static void over_rows(rows_fn fn, const void *job, int B, int H) {
    struct rows_call call = {fn, job, B};
    if (gomp_parallel && (long)B * H >= 4096) gomp_parallel(rows_share, &call, 0, 0); /* 0: torch's count */
    else rows_share(&call); /* outside a parallel region: thread 0 of 1 */
}

/* exp for the tanh, written so that the compiler vectorises it (Cephes' expf: ~1 ulp). The clamps
 * keep 2^k a normal float; a NaN passes through them (comparisons with NaN are false) and stays NaN. */
static inline float exp_f(float x) {
    x = x > 88.0f ? 88.0f : x;
    x = x < -87.0f ? -87.0f : x;
    const float rounded = x * 1.44269504088896341f + 12582912.0f; /* + 1.5 * 2^23: round to an integer */
    uint32_t bits;
    memcpy(&bits, &rounded, sizeof bits);
    const float k = rounded - 12582912.0f;
    float r = x - k * 0.693359375f;
    r = r - k * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const uint32_t scale_bits = (bits - 0x4B400000u + 127u) << 23; /* 2^k */
    float scale;
    memcpy(&scale, &scale_bits, sizeof scale);
    return p * scale;
}

static inline float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }
static inline float tanh_f(float x) { return 2.0f / (1.0f + exp_f(-2.0f * x)) - 1.0f; } /* 2 sigmoid(2x) - 1 */

/* The step's activation in place on n values, after adding the bias (h columns) to each row. */
static void activate(float *o, const float *bias, long rows, int h, int tanh_) {
    for (long r = 0; r < rows; r++) {
        float *row = o + r * h;
        if (tanh_) {
            for (int j = 0; j < h; j++) row[j] = tanh_f(row[j] + bias[j]); /* as the TorchScript loops do it */
        } else {
            for (int j = 0; j < h; j++) {
                const float v = row[j] + bias[j];
                row[j] = v < 0.0f ? 0.0f : v; /* NaN stays NaN, as torch.relu */
            }
        }
    }
}

/* g <- g * activation'(o), where o is the activation's output. */
static void activation_grad(float *g, const float *o, long n, int tanh_) {
    if (tanh_) {
        for (long i = 0; i < n; i++) g[i] *= 1.0f - o[i] * o[i];
    } else {
        for (long i = 0; i < n; i++) g[i] = o[i] <= 0.0f ? 0.0f : g[i]; /* as threshold_backward */
    }
}

enum { CELL_RELU = 0, CELL_TANH = 1, CELL_LSTM = 2 };

/* Floats of scratch memory a step needs. */
long rnnlab_workspace(int cell, int layers, int steps, int batch, int features, int hidden, int classes) {
    const long tb = (long)steps * batch, gates = cell == CELL_LSTM ? 4L * hidden : hidden;
    const long per_layer = cell == CELL_LSTM ? tb * (gates + 3L * hidden) : tb * hidden; /* what backward reads */
    const long widest = features > hidden ? features : hidden;
    return tb * features + layers * per_layer + tb * gates + tb * hidden + 2L * batch * classes
           + 4L * batch * hidden + 256L * features + widest * gates + gates + tb;
}

/* ---- shared by the cells ---------------------------------------------------------------------- */

/* The batch: rows idx (B) of data (N, T, F), gathered, scaled, standardised, time-major into x (T, B, F). */
static void load_batch(int T, int B, int F, const void *data, int data_u8, const int64_t *idx, const float *mean,
                       const float *std, float *table, float *x) {
    /* The rows lie anywhere in the training set (tens of MB): ask for all their cache lines at once
     * rather than wait for each in turn (a tenth of a dlw-rnn-a step otherwise). */
    const long row_bytes = (long)T * F * (data_u8 ? 1 : 4);
    for (int b = 0; b < B; b++)
        for (long at = 0; at < row_bytes; at += 64) __builtin_prefetch((const char *)data + idx[b] * row_bytes + at);
    if (data_u8) {
        for (int f = 0; f < F; f++)
            for (int v = 0; v < 256; v++) table[f * 256 + v] = ((float)v / 255.0f - mean[f]) / std[f];
        for (int b = 0; b < B; b++) {
            const uint8_t *row = (const uint8_t *)data + idx[b] * (long)T * F;
            for (int t = 0; t < T; t++) {
                float *dst = x + ((long)t * B + b) * F;
                for (int f = 0; f < F; f++) dst[f] = table[f * 256 + row[(long)t * F + f]];
            }
        }
    } else {
        for (int b = 0; b < B; b++) {
            const float *row = (const float *)data + idx[b] * (long)T * F;
            for (int t = 0; t < T; t++) {
                float *dst = x + ((long)t * B + b) * F;
                for (int f = 0; f < F; f++) dst[f] = (row[(long)t * F + f] - mean[f]) / std[f];
            }
        }
    }
}

/* The head on features (B, H): logits, the summed loss and correct count into totals, and the
 * gradients of the batch's mean loss w.r.t. the head's weights (into head_grads) and the features
 * (dfeat, (B, H)). Returns the summed loss. */
static float head_and_loss(int B, int H, int C, const float *features, const float *head_w, const float *head_b,
                           const int64_t *labels, const int64_t *idx, float smoothing, float *logits, float *dlogits,
                           float *head_gw, float *head_gb, float *dfeat, float *totals) {
    for (int b = 0; b < B; b++) memcpy(logits + (long)b * C, head_b, C * sizeof(float));
    gemm(B, C, H, features, 0, head_w, 1, 1.0f, logits);
    float loss_sum = 0.0f, correct = 0.0f;
    const float scale = 1.0f / (float)B; /* the mean over the batch */
    for (int b = 0; b < B; b++) {
        const float *z = logits + (long)b * C;
        float *d = dlogits + (long)b * C;
        const int y = (int)labels[idx[b]];
        float top = z[0];
        int arg = 0;
        for (int c = 1; c < C; c++)
            if (z[c] > top || (z[c] != z[c] && top == top)) { top = z[c]; arg = c; } /* NaN wins, as argmax */
        float sum = 0.0f;
        for (int c = 0; c < C; c++) sum += exp_f(z[c] - top);
        const float log_sum = top + logf(sum);
        float log_prob_sum = 0.0f;
        for (int c = 0; c < C; c++) {
            const float log_prob = z[c] - log_sum;
            log_prob_sum += log_prob;
            /* d loss / d logits: softmax - the smoothed one-hot target */
            d[c] = (exp_f(log_prob) - smoothing / C - (c == y ? 1.0f - smoothing : 0.0f)) * scale;
        }
        loss_sum += -(1.0f - smoothing) * (z[y] - log_sum) - smoothing * log_prob_sum / C;
        correct += (float)(arg == y);
    }
    totals[0] = loss_sum;
    totals[1] = correct;
    gemm(C, H, B, dlogits, 1, features, 0, 0.0f, head_gw); /* (C, B) x (B, H) */
    for (int c = 0; c < C; c++) head_gb[c] = 0.0f;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) head_gb[c] += dlogits[(long)b * C + c];
    gemm(B, H, C, dlogits, 0, head_w, 0, 0.0f, dfeat); /* (B, C) x (C, H) */
    return loss_sum;
}

/* A layer's weight gradients from its pre-activation gradients dg (T, B, G), over all steps at once:
 * dW_hh = sum_t dg_t^T h_(t-1) with outs (T, B, H); dW_ih = dg^T x with x (T, B, width); both biases
 * the sum of dg. */
static void weight_grads(int T, int B, int H, int G, int width, const float *dg, const float *outs, const float *x,
                         const float *ones, float *dw_ih_t, float *gw_ih, float *gw_hh, float *gb_ih, float *gb_hh) {
    const long TB = (long)T * B;
    gemm(G, H, (int)(TB - B), dg + (long)B * G, 1, outs, 0, 0.0f, gw_hh);
    gemm(width, G, (int)TB, x, 1, dg, 0, 0.0f, dw_ih_t); /* (x^T dg): faster for a narrow x */
    for (int i = 0; i < G; i++)
        for (int f = 0; f < width; f++) gw_ih[(long)i * width + f] = dw_ih_t[(long)f * G + i];
    gemm(1, G, (int)TB, ones, 0, dg, 0, 0.0f, gb_ih); /* the sum over steps and batch, (1, T*B) x (T*B, G) */
    memcpy(gb_hh, gb_ih, G * sizeof(float));
}

/* ---- the cells ----------------------------------------------------------------------------------- */

/* One Elman step on this thread's rows: forward, o += prev W_hh^T (unless first) then the activation;
 * backward, o = gout_t (or 0) + prev W_hh, then times the activation's derivative at out_t. Each
 * thread multiplies its own rows (MKL runs one thread inside a parallel region): at B x H = 100 x 100
 * two halves side by side take less time than the whole on MKL's two threads, whose every call
 * forks and joins its team. */
struct elman_rows {
    int backward, B, H, tanh_, first_step;
    const float *prev, *w, *bias, *out_t, *gout_t;
    float *o;
};

static void elman_rows_run(const void *arg, int first, int last) {
    const struct elman_rows *job = arg;
    const int H = job->H, rows = last - first;
    float *o = job->o + (long)first * H;
    if (!job->backward) {
        if (!job->first_step) gemm(rows, H, H, job->prev + (long)first * H, 0, job->w, 1, 1.0f, o);
        activate(o, job->bias, rows, H, job->tanh_);
        return;
    }
    if (job->gout_t) memcpy(o, job->gout_t + (long)first * H, (long)rows * H * sizeof(float));
    if (!job->first_step) gemm(rows, H, H, job->prev + (long)first * H, 0, job->w, 0, job->gout_t ? 1.0f : 0.0f, o);
    activation_grad(o, job->out_t + (long)first * H, (long)rows * H, job->tanh_);
}

/* Elman forward: out (T, B, H) <- act(x W_ih^T + h_(t-1) W_hh^T + b). */
static void elman_forward(int T, int B, int H, int width, int tanh_, const float *in, float *const *p,
                          float *bias, float *out) {
    const long n = (long)B * H;
    for (int j = 0; j < H; j++) bias[j] = p[2][j] + p[3][j];
    gemm(T * B, H, width, in, 0, p[0], 1, 0.0f, out); /* (T*B, F_l) x (F_l, H) */
    for (int t = 0; t < T; t++) {
        struct elman_rows job = {.backward = 0, .B = B, .H = H, .tanh_ = tanh_, .first_step = t == 0,
                                 .prev = out + (long)(t - (t > 0)) * n, .w = p[1], .bias = bias, .o = out + (long)t * n};
        over_rows(elman_rows_run, &job, B, H); /* += h_(t-1) W_hh^T, then act */
    }
}

/* Elman backward through time: dg (T, B, H) from gout (every step's output gradient, or NULL: only
 * dlast reaches the last step). */
static void elman_backward(int T, int B, int H, int tanh_, const float *out, const float *w_hh, const float *gout,
                           const float *dlast, float *dg) {
    const long n = (long)B * H;
    for (int t = T - 1; t >= 0; t--) {
        const int last = t == T - 1;
        struct elman_rows job = {.backward = 1, .B = B, .H = H, .tanh_ = tanh_, .first_step = last,
                                 .prev = dg + (long)(t + !last) * n, .w = w_hh, .out_t = out + (long)t * n,
                                 .gout_t = last && !gout ? dlast : gout ? gout + (long)t * n : NULL,
                                 .o = dg + (long)t * n};
        over_rows(elman_rows_run, &job, B, H); /* dg_t = (gout_t + dg_(t+1) W_hh) * act'(out_t) */
    }
}

/* One LSTM cell on one sequence (torch's gate order i, f, g, o): a (4H) the pre-activations less the
 * bias, overwritten with the gate activations; c_prev (H) -> c, tanh(c), h (H). restrict: nothing
 * here overlaps, which lets the compiler vectorise the loop. */
static void lstm_cell(int H, float *restrict a, const float *restrict bias, const float *restrict c_prev,
                      float *restrict c, float *restrict tc, float *restrict h) {
    for (int j = 0; j < H; j++) {
        const float i = sigmoid_f(a[j] + bias[j]), f = sigmoid_f(a[H + j] + bias[H + j]);
        const float g = tanh_f(a[2 * H + j] + bias[2 * H + j]), o = sigmoid_f(a[3 * H + j] + bias[3 * H + j]);
        const float cell = f * c_prev[j] + i * g, tcell = tanh_f(cell);
        a[j] = i;
        a[H + j] = f;
        a[2 * H + j] = g;
        a[3 * H + j] = o;
        c[j] = cell;
        tc[j] = tcell;
        h[j] = o * tcell;
    }
}

/* The gradients of one LSTM cell on one sequence: dh (H) w.r.t. its output; dc (H) holds the cell
 * state's gradient from the next step and f_next that step's forget gate (dc zeros at the last
 * step), and gets this step's. d (4H): the pre-activation gradients. */
static void lstm_cell_grad(int H, const float *restrict a, const float *restrict tc, const float *restrict c_prev,
                           const float *restrict f_next, const float *restrict dh, float *restrict dc,
                           float *restrict d) {
    for (int j = 0; j < H; j++) {
        const float i = a[j], f = a[H + j], g = a[2 * H + j], o = a[3 * H + j], t = tc[j];
        /* the cell's gradient: through h_t, plus what c_(t+1) passed back through its forget gate */
        const float c_grad = dc[j] * f_next[j] + dh[j] * o * (1.0f - t * t);
        d[j] = c_grad * g * i * (1.0f - i);
        d[H + j] = c_grad * c_prev[j] * f * (1.0f - f);
        d[2 * H + j] = c_grad * i * (1.0f - g * g);
        d[3 * H + j] = dh[j] * t * o * (1.0f - o);
        dc[j] = c_grad;
    }
}

struct cells {
    int backward, B, H, first_step;    /* first_step: no recurrent GEMM (the first forward, last backward step) */
    const float *w_hh, *prev;          /* (4H, H); forward h_(t-1) (B, H), backward dg_(t+1) (B, 4H) */
    float *a;                          /* (B, 4H) this step's gates */
    const float *bias, *c_prev;        /* (4H), (B, H) */
    float *c, *tc, *h;                 /* forward: (B, H) each */
    const float *f_next;               /* backward: (B, 4H) the next step's gates (f at +H), or this step's */
    const float *dh_from;              /* backward: (B, H) the gradient reaching the outputs, or NULL */
    float *dh, *dc, *d;                /* backward: (B, H), (B, H), (B, 4H) */
};

/* One LSTM step on this thread's rows: the recurrent GEMM, then the cells (forward or backward). Each
 * thread multiplies its own rows, as the Elman steps do. */
static void cells_rows(const void *arg, int first, int last) {
    const struct cells *job = arg;
    const int H = job->H, rows = last - first;
    const long G = 4L * H;
    if (!job->backward) {
        if (!job->first_step) /* += h_(t-1) W_hh^T */
            gemm(rows, (int)G, H, job->prev + (long)first * H, 0, job->w_hh, 1, 1.0f, job->a + first * G);
    } else {
        float *dh = job->dh + (long)first * H;
        if (job->dh_from) memcpy(dh, job->dh_from + (long)first * H, (long)rows * H * sizeof(float));
        if (job->first_step) memset(job->dc + (long)first * H, 0, (long)rows * H * sizeof(float));
        else /* += dg_(t+1) W_hh */
            gemm(rows, H, (int)G, job->prev + first * G, 0, job->w_hh, 0, job->dh_from ? 1.0f : 0.0f, dh);
    }
    for (int b = first; b < last; b++) {
        if (job->backward)
            lstm_cell_grad(H, job->a + b * G, job->tc + (long)b * H, job->c_prev + (long)b * H,
                           job->f_next + b * G + H, job->dh + (long)b * H, job->dc + (long)b * H, job->d + b * G);
        else
            lstm_cell(H, job->a + b * G, job->bias, job->c_prev + (long)b * H, job->c + (long)b * H,
                      job->tc + (long)b * H, job->h + (long)b * H);
    }
}

/* LSTM forward: acts (T, B, 4H) the gate activations, cs (T, B, H) the cell states, tcs their tanh,
 * hs (T, B, H) the outputs. zeros: (B, H) of zeros, the cell state before the first step. */
static void lstm_forward(int T, int B, int H, int width, const float *in, float *const *p, float *bias,
                         const float *zeros, float *acts, float *cs, float *tcs, float *hs) {
    const int G = 4 * H;
    const long n = (long)B * H;
    for (int j = 0; j < G; j++) bias[j] = p[2][j] + p[3][j];
    gemm(T * B, G, width, in, 0, p[0], 1, 0.0f, acts); /* (T*B, F_l) x (F_l, 4H) */
    for (int t = 0; t < T; t++) {
        struct cells job = {.backward = 0, .B = B, .H = H, .first_step = t == 0, .w_hh = p[1],
                            .prev = hs + (t - (t > 0)) * n, .a = acts + (long)t * B * G, .bias = bias,
                            .c_prev = t > 0 ? cs + (t - 1) * n : zeros, .c = cs + t * n, .tc = tcs + t * n,
                            .h = hs + t * n};
        over_rows(cells_rows, &job, B, H);
    }
}

/* LSTM backward through time: dg (T, B, 4H) the pre-activation gradients, from gout (T, B, H) or,
 * NULL, dlast (B, H) at the last step alone. dh, dc: (B, H) scratch; zeros (B, H). */
static void lstm_backward(int T, int B, int H, const float *acts, const float *cs, const float *tcs,
                          const float *w_hh, const float *gout, const float *dlast, const float *zeros, float *dh,
                          float *dc, float *dg) {
    const int G = 4 * H;
    const long n = (long)B * H;
    for (int t = T - 1; t >= 0; t--) {
        const int last = t == T - 1;
        float *a = (float *)acts + (long)t * B * G;
        /* the next step's gates, for its forget gate; at the last step dc is zeros, and this step's own stand in */
        struct cells job = {.backward = 1, .B = B, .H = H, .first_step = last, .w_hh = w_hh,
                            .prev = dg + (long)(t + !last) * B * G, .a = a,
                            .c_prev = t > 0 ? cs + (t - 1) * n : zeros, .tc = (float *)tcs + t * n,
                            .f_next = last ? a : a + (long)B * G,
                            .dh_from = last && !gout ? dlast : gout ? gout + (long)t * n : NULL,
                            .dh = dh, .dc = dc, .d = dg + (long)t * B * G};
        over_rows(cells_rows, &job, B, H);
    }
}

/* One SGD step on the rows idx (B) of the training set data (N, T, F), uint8 pixels (scaled by 1/255)
 * or float32, with labels (N) in [0, C). mean, std (F): the model's standardisation. cell: CELL_*.
 * params: per layer w_ih (G, F_l), w_hh (G, H), b_ih (G), b_hh (G), G = H or 4H; then the head's
 * w (C, H), b (C); sizes: their element counts. grads: buffers of the same shapes (written, then
 * applied). work: rnnlab_workspace floats. Adds nothing to any .grad. totals (2): the batch's summed
 * loss and correct count. Returns 0; 1 if an index is out of range, 2 if a label is (nothing is
 * changed then); 3 if guard is set and the loss is not finite (totals are written, the weights are not
 * updated). */
int rnnlab_sgd_step(int cell, int L, int T, int B, int F, int H, int C, const void *data, int data_u8, long N,
                    const int64_t *labels, const int64_t *idx, const float *mean, const float *std,
                    float *const *params, float *const *grads, const long *sizes, float *work, float lr,
                    float smoothing, int guard, float *totals) {
    for (int b = 0; b < B; b++) {
        if (idx[b] < 0 || idx[b] >= N) return 1;
        if (labels[idx[b]] < 0 || labels[idx[b]] >= C) return 2;
    }
    const int lstm = cell == CELL_LSTM, G = lstm ? 4 * H : H;
    const long TB = (long)T * B, per_layer = lstm ? TB * (G + 3L * H) : TB * H;
    float *x = work;                                /* (T, B, F) the standardised batch */
    float *kept = x + TB * F;                       /* L x per_layer: what each layer's backward reads */
    float *dg = kept + L * per_layer;               /* (T, B, G) the gradient w.r.t. pre-activations */
    float *dx = dg + TB * G;                        /* (T, B, H) the gradient w.r.t. a layer's input */
    float *logits = dx + TB * H;                    /* (B, C) */
    float *dlogits = logits + (long)B * C;          /* (B, C) */
    float *dfeat = dlogits + (long)B * C;           /* (B, H) */
    float *dh = dfeat + (long)B * H, *dc = dh + (long)B * H; /* (B, H) each */
    float *zeros = dc + (long)B * H;                /* (B, H) the LSTM's cell state before the first step */
    float *table = zeros + (long)B * H;             /* (F, 256) standardised pixel values */
    float *dw_ih_t = table + 256L * F;              /* (F_l, G) dW_ih transposed, F_l = F or H */
    float *bias = dw_ih_t + (long)(F > H ? F : H) * G; /* (G) b_ih + b_hh */
    float *ones = bias + G;                         /* (T * B) */
    for (long i = 0; i < TB; i++) ones[i] = 1.0f;
    memset(zeros, 0, (long)B * H * sizeof(float));
    /* a layer's outputs (T, B, H): the Elman layer keeps only them; the LSTM its gates, cells, tanh(cells) too */
#define OUTS(l) (lstm ? kept + (l) * per_layer + TB * (G + 2L * H) : kept + (l) * per_layer)

    load_batch(T, B, F, data, data_u8, idx, mean, std, table, x);
    const float *in = x;
    for (int l = 0; l < L; l++) {
        const int width = l > 0 ? H : F;
        float *base = kept + l * per_layer;
        if (lstm) lstm_forward(T, B, H, width, in, params + 4 * l, bias, zeros, base, base + TB * G,
                               base + TB * (G + H), (float *)OUTS(l));
        else elman_forward(T, B, H, width, cell == CELL_TANH, in, params + 4 * l, bias, base);
        in = OUTS(l);
    }
    const float *features = OUTS(L - 1) + (long)(T - 1) * B * H; /* (B, H) the top layer's last step */
    const float loss_sum = head_and_loss(B, H, C, features, params[4 * L], params[4 * L + 1], labels, idx,
                                         smoothing, logits, dlogits, grads[4 * L], grads[4 * L + 1], dfeat, totals);
    if (guard && !(loss_sum - loss_sum == 0.0f)) return 3; /* NaN or inf: leave the weights as they are */

    const float *gout = NULL; /* d loss / d every step's output, from the layer above; NULL for the top */
    for (int l = L - 1; l >= 0; l--) {
        const int width = l > 0 ? H : F;
        const float *base = kept + l * per_layer;
        if (lstm) lstm_backward(T, B, H, base, base + TB * G, base + TB * (G + H), params[4 * l + 1], gout, dfeat,
                                zeros, dh, dc, dg);
        else elman_backward(T, B, H, cell == CELL_TANH, base, params[4 * l + 1], gout, dfeat, dg);
        weight_grads(T, B, H, G, width, dg, OUTS(l), l > 0 ? OUTS(l - 1) : x, ones, dw_ih_t, grads[4 * l],
                     grads[4 * l + 1], grads[4 * l + 2], grads[4 * l + 3]);
        if (l > 0) {
            gemm((int)TB, H, G, dg, 0, params[4 * l], 0, 0.0f, dx); /* (T*B, G) x (G, H_below) */
            gout = dx;
        }
    }
#undef OUTS
    /* ---- the update: p -= lr * grad */
    for (int k = 0; k < 4 * L + 2; k++) {
        float *p = params[k];
        const float *gr = grads[k];
        for (long i = 0; i < sizes[k]; i++) p[i] -= lr * gr[i];
    }
    return 0;
}

/* count steps one after another, as many calls of rnnlab_sgd_step without guard: step s trains on
 * idx[s * B .. (s + 1) * B) with learning rate lrs[s] and writes totals[2s .. 2s + 2). Saves the
 * caller's per-step overhead between the looks for a NaN loss. Returns 0, or the first failing
 * step's code (the steps before it stay applied). */
int rnnlab_sgd_steps(int count, int cell, int L, int T, int B, int F, int H, int C, const void *data, int data_u8,
                     long N, const int64_t *labels, const int64_t *idx, const float *mean, const float *std,
                     float *const *params, float *const *grads, const long *sizes, float *work, const float *lrs,
                     float smoothing, float *totals) {
    for (int step = 0; step < count; step++) {
        const int code = rnnlab_sgd_step(cell, L, T, B, F, H, C, data, data_u8, N, labels, idx + (long)step * B, mean,
                                         std, params, grads, sizes, work, lrs[step], smoothing, 0, totals + 2 * step);
        if (code) return code;
    }
    return 0;
}

