/* One whole training step of plain SGD for a unidirectional Elman stack (ReLU or tanh) read at
 * its last step, in C: the batch, forward, cross-entropy, backward and the update.
 *
 * Why C: on dlw-rnn-a (batch 100, 28 steps, 1x100) the step is some 60 GEMMs and as many small
 * elementwise passes. TorchScript pays a few microseconds of dispatch for each of its ~150 ops,
 * a third of the step; here the elementwise work is plain loops and the GEMMs go straight to
 * the BLAS that torch itself calls (its Fortran ``sgemm_``, MKL on x86 builds, whose pointer
 * native.py passes in), so the step is its GEMMs and little else.
 *
 * The arithmetic is that of models/fast_step.py (same GEMMs, same order of the sums that
 * matter), though not bit for bit: the bias is added after the step's GEMM rather than before,
 * and exp is our own. tests/test_native_step.py checks the losses and weights against it.
 *
 * Layout: everything row-major and time-major, buffers (T, B, .) and states (B, H).
 * Compiled by native.py with the system C compiler on first use; no Python headers needed. */

#include <stdint.h>
#include <string.h>

typedef void (*sgemm_fn)(const char *, const char *, const int *, const int *, const int *, const float *,
                         const float *, const int *, const float *, const int *, const float *, float *,
                         const int *);
static sgemm_fn sgemm;

void rnnlab_set_sgemm(void *fn) { sgemm = (sgemm_fn)fn; }

/* Row-major c (m, n) = a' b' + beta c, with a' = a (m, k), or its transpose if a_t (a stored (k, m));
 * b' = b (k, n), or its transpose if b_t (b stored (n, k)). The Fortran BLAS is column-major, and a
 * row-major matrix is its column-major transpose: so ask for c^T = b'^T a'^T. */
static void gemm(int m, int n, int k, const float *a, int a_t, const float *b, int b_t, float beta, float *c) {
    const float one = 1.0f;
    const int lda = a_t ? m : k, ldb = b_t ? k : n, ldc = n;
    sgemm(b_t ? "T" : "N", a_t ? "T" : "N", &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
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

/* The step's activation in place on n values, after adding the bias (h columns) to each row. */
static void activate(float *o, const float *bias, long rows, int h, int tanh_) {
    for (long r = 0; r < rows; r++) {
        float *row = o + r * h;
        if (tanh_) {
            for (int j = 0; j < h; j++) /* tanh(a) = 2 sigmoid(2a) - 1, as the TorchScript loops do it */
                row[j] = 2.0f / (1.0f + exp_f(-2.0f * (row[j] + bias[j]))) - 1.0f;
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

/* Floats of scratch memory a step needs. */
long rnnlab_elman_workspace(int layers, int steps, int batch, int features, int hidden, int classes) {
    const long tb = (long)steps * batch;
    return tb * features + (long)layers * tb * hidden + 2 * tb * hidden + 2L * batch * classes
           + (long)batch * hidden + 256L * features + (long)(features > hidden ? features : hidden) * hidden
           + hidden + tb;
}

/* One SGD step on the rows idx (B) of the training set data (N, T, F), uint8 pixels (scaled by 1/255)
 * or float32, with labels (N) in [0, C). mean, std (F): the model's standardisation.
 * params: per layer w_ih (H, F_l), w_hh (H, H), b_ih (H), b_hh (H); then the head's w (C, H), b (C).
 * grads: buffers of the same shapes (written, then applied). work: rnnlab_elman_workspace floats.
 * Adds nothing to any .grad. totals (2): the batch's summed loss and correct count.
 * Returns 0; 1 if an index is out of range, 2 if a label is (nothing is changed then); 3 if guard
 * is set and the loss is not finite (totals are written, the weights are not updated). */
int rnnlab_elman_sgd_step(int L, int T, int B, int F, int H, int C, int tanh_, const void *data, int data_u8,
                          long N, const int64_t *labels, const int64_t *idx, const float *mean, const float *std,
                          float *const *params, float *const *grads, float *work, float lr, float smoothing,
                          int guard, float *totals) {
    for (int b = 0; b < B; b++) {
        if (idx[b] < 0 || idx[b] >= N) return 1;
        if (labels[idx[b]] < 0 || labels[idx[b]] >= C) return 2;
    }
    const long TB = (long)T * B, n = (long)B * H;
    float *x = work;                            /* (T, B, F) the standardised batch */
    float *outs = x + TB * F;                   /* L x (T, B, H) each layer's outputs */
    float *g = outs + (long)L * TB * H;         /* (T, B, H) the gradient w.r.t. pre-activations */
    float *dx = g + TB * H;                     /* (T, B, H) the gradient w.r.t. a layer's input */
    float *logits = dx + TB * H;                /* (B, C) */
    float *dlogits = logits + (long)B * C;      /* (B, C) */
    float *dfeat = dlogits + (long)B * C;       /* (B, H) */
    float *table = dfeat + (long)B * H;         /* (F, 256) standardised pixel values */
    float *dw_ih_t = table + 256L * F;          /* (F_l, H) dW_ih transposed, F_l = F or H */
    float *bias = dw_ih_t + (long)(F > H ? F : H) * H; /* (H) b_ih + b_hh */
    float *ones = bias + H;                     /* (T * B) */
    for (long i = 0; i < TB; i++) ones[i] = 1.0f;

    /* ---- the batch: gather, scale, standardise, time-major. (B, T, F) -> (T, B, F) */
    /* The rows lie anywhere in the training set (tens of MB): ask for all their cache lines at once
     * rather than wait for each in turn (a tenth of the step on dlw-rnn-a otherwise). */
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

    /* ---- forward: per layer, one GEMM for every step's input projection, then the recurrence */
    const float *in = x;
    int in_width = F;
    for (int l = 0; l < L; l++) {
        float *out = outs + (long)l * TB * H;
        const float *b_ih = params[4 * l + 2], *b_hh = params[4 * l + 3];
        for (int j = 0; j < H; j++) bias[j] = b_ih[j] + b_hh[j];
        gemm((int)TB, H, in_width, in, 0, params[4 * l], 1, 0.0f, out); /* (T*B, F_l) x (F_l, H) */
        for (int t = 0; t < T; t++) {
            float *o = out + (long)t * n; /* (B, H) */
            if (t > 0) gemm(B, H, H, o - n, 0, params[4 * l + 1], 1, 1.0f, o); /* += h_(t-1) W_hh^T */
            activate(o, bias, B, H, tanh_);
        }
        in = out;
        in_width = H;
    }

    /* ---- head and loss: logits (B, C) from the top layer's last step */
    const float *features = outs + (long)(L - 1) * TB * H + (long)(T - 1) * n; /* (B, H) */
    const float *head_w = params[4 * L], *head_b = params[4 * L + 1];
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
        const float log_sum = top + __builtin_logf(sum);
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
    if (guard && !(loss_sum - loss_sum == 0.0f)) return 3; /* NaN or inf: leave the weights as they are */

    /* ---- backward: the head */
    float *head_gw = grads[4 * L], *head_gb = grads[4 * L + 1];
    gemm(C, H, B, dlogits, 1, features, 0, 0.0f, head_gw); /* (C, B) x (B, H) */
    for (int c = 0; c < C; c++) head_gb[c] = 0.0f;
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) head_gb[c] += dlogits[(long)b * C + c];
    gemm(B, H, C, dlogits, 0, head_w, 0, 0.0f, dfeat); /* (B, C) x (C, H) */

    /* ---- backward through the layers, top first. gout: d loss / d every step's output, from the
     * layer above; the top layer's only reaches its last step (dfeat). */
    const float *gout = NULL;
    for (int l = L - 1; l >= 0; l--) {
        const float *out = outs + (long)l * TB * H, *w_hh = params[4 * l + 1];
        const float *layer_in = l > 0 ? outs + (long)(l - 1) * TB * H : x;
        const int width = l > 0 ? H : F;
        for (int t = T - 1; t >= 0; t--) {
            float *gt = g + (long)t * n; /* (B, H) */
            if (t == T - 1) {
                memcpy(gt, gout ? gout + (long)t * n : dfeat, n * sizeof(float));
            } else if (gout) {
                memcpy(gt, gout + (long)t * n, n * sizeof(float));
                gemm(B, H, H, gt + n, 0, w_hh, 0, 1.0f, gt); /* += g_(t+1) W_hh */
            } else {
                gemm(B, H, H, gt + n, 0, w_hh, 0, 0.0f, gt);
            }
            activation_grad(gt, out + (long)t * n, n, tanh_);
        }
        /* weight gradients over all steps at once */
        gemm(H, H, (int)(TB - B), g + n, 1, out, 0, 0.0f, grads[4 * l + 1]); /* sum_t g_t^T h_(t-1) */
        gemm(width, H, (int)TB, layer_in, 1, g, 0, 0.0f, dw_ih_t); /* (x^T g): faster for a narrow x */
        float *gw_ih = grads[4 * l];
        for (int i = 0; i < H; i++)
            for (int f = 0; f < width; f++) gw_ih[(long)i * width + f] = dw_ih_t[(long)f * H + i];
        float *gb = grads[4 * l + 2];
        gemm(1, H, (int)TB, ones, 0, g, 0, 0.0f, gb); /* the sum over steps and batch, (1, T*B) x (T*B, H) */
        memcpy(grads[4 * l + 3], gb, H * sizeof(float));
        if (l > 0) {
            gemm((int)TB, H, H, g, 0, params[4 * l], 0, 0.0f, dx); /* (T*B, H) x (H, H_below) */
            gout = dx;
        }
    }

    /* ---- the update: p -= lr * grad */
    for (int l = 0; l <= L; l++) {
        const int width = l > 0 ? H : F;
        const long sizes[4] = {l < L ? (long)H * width : (long)C * H, l < L ? (long)H * H : C, H, H};
        for (int k = 0; k < (l < L ? 4 : 2); k++) {
            float *p = params[4 * l + k];
            const float *gr = grads[4 * l + k];
            for (long i = 0; i < sizes[k]; i++) p[i] -= lr * gr[i];
        }
    }
    return 0;
}
