/* The step of nca_step (nca.h): perceive the neighbourhood with the model's convolutions,
 * compute the residual update with its MLP, apply it to the cells that fire, then clear the
 * cells that were not alive (alpha above the threshold in their 3x3 neighbourhood) both
 * before and after the update. The same mathematics as nca's reference_step. */
#include "nca.h"

#include <math.h>
#include <stddef.h>
#include <string.h>

#define NCA_CELLS (NCA_HEIGHT * NCA_WIDTH)

static float features[NCA_FEATURES];
static float hidden[2][NCA_MAX_WIDTH];
#if NCA_ALIVE_CHANNEL >= 0
static uint8_t alive_cells[NCA_CELLS]; /* alive before the step, then kept after it */
#endif

/* The index of row or column i of a grid of n, read through the border; -1 reads a zero. */
static int border(int i, int n) {
#if NCA_PADDING == NCA_PAD_CIRCULAR
    return ((i % n) + n) % n;
#elif NCA_PADDING == NCA_PAD_REFLECT
    if (i < 0) i = -i;
    if (i >= n) i = 2 * (n - 1) - i;
    return i;
#else
    return (i < 0 || i >= n) ? -1 : i;
#endif
}

static float activate(int kind, float v) {
    switch (kind) {
    case NCA_ACT_RELU: return v > 0.0f ? v : 0.0f;
    case NCA_ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case NCA_ACT_SILU: return v / (1.0f + expf(-v));
    case NCA_ACT_TANH: return tanhf(v);
    case NCA_ACT_ELU: return v > 0.0f ? v : expm1f(v);
    case NCA_ACT_LEAKY_RELU: return v > 0.0f ? v : 0.01f * v;
    case NCA_ACT_LEAKY_RELU_02: return v > 0.0f ? v : 0.2f * v;
    default: return v;
    }
}

/* Weight i of a table: float, or int8 times the scale of its output row. */
static float weight(const nca_weights *w, size_t i, size_t row) {
    return w->q ? (float)w->q[i] * w->scale[row] : w->f[i];
}

static void perceive(const float *state, int y, int x) {
    int offset = 0;
    for (int t = 0; t < NCA_N_CONVOLUTIONS; t++) {
        const nca_convolution *conv = &NCA_CONVOLUTIONS[t];
        const int k = conv->kernel, d = conv->dilation, r = d * (k - 1) / 2;
        const int inputs = conv->depthwise ? 1 : NCA_CHANNELS;
        const int per_channel = conv->features / NCA_CHANNELS;
        for (int f = 0; f < conv->features; f++) {
            float sum = conv->bias ? conv->bias[f] : 0.0f;
            for (int ky = 0; ky < k; ky++) {
                const int yy = border(y + ky * d - r, NCA_HEIGHT);
                if (yy < 0) continue;
                for (int kx = 0; kx < k; kx++) {
                    const int xx = border(x + kx * d - r, NCA_WIDTH);
                    if (xx < 0) continue;
                    const float *cell = state + ((size_t)yy * NCA_WIDTH + xx) * NCA_CHANNELS;
                    for (int i = 0; i < inputs; i++) {
                        const int c = conv->depthwise ? f / per_channel : i;
                        const size_t at = (((size_t)f * inputs + i) * k + ky) * k + kx;
                        sum += weight(&conv->weight, at, (size_t)f) * cell[c];
                    }
                }
            }
            features[offset + f] = activate(conv->activation, sum);
        }
        offset += conv->features;
    }
}

/* The MLP on `features`; returns the update of the NCA_CHANNELS - NCA_FIXED written channels. */
static const float *update(void) {
    const float *in = features;
    for (int l = 0; l < NCA_N_LAYERS; l++) {
        const nca_layer *layer = &NCA_LAYERS[l];
        float *out = hidden[l % 2];
        const int last = l == NCA_N_LAYERS - 1;
        for (int o = 0; o < layer->outputs; o++) {
            float sum = layer->bias[o];
            for (int i = 0; i < layer->inputs; i++)
                sum += weight(&layer->weight, (size_t)o * layer->inputs + i, (size_t)o) * in[i];
            out[o] = last ? sum : activate(NCA_ACTIVATION, sum);
        }
        in = out;
    }
    return in;
}

#if NCA_ALIVE_CHANNEL >= 0
static int alive(const float *state, int y, int x) {
#if NCA_ALIVE_POOL
    float most = -INFINITY;
    for (int dy = -1; dy <= 1; dy++) {
        const int yy = border(y + dy, NCA_HEIGHT);
        for (int dx = -1; dx <= 1; dx++) {
            const int xx = border(x + dx, NCA_WIDTH);
            const float a = (yy < 0 || xx < 0)
                ? 0.0f
                : state[((size_t)yy * NCA_WIDTH + xx) * NCA_CHANNELS + NCA_ALIVE_CHANNEL];
            if (a > most) most = a;
        }
    }
    return most > NCA_ALIVE_THRESHOLD;
#else
    return state[((size_t)y * NCA_WIDTH + x) * NCA_CHANNELS + NCA_ALIVE_CHANNEL] >
           NCA_ALIVE_THRESHOLD;
#endif
}
#endif

void nca_step(const float *state, float *next, const uint8_t *fire_mask) {
    for (int y = 0; y < NCA_HEIGHT; y++) {
        for (int x = 0; x < NCA_WIDTH; x++) {
            const size_t cell = (size_t)y * NCA_WIDTH + x;
            const float *in = state + cell * NCA_CHANNELS;
            float *out = next + cell * NCA_CHANNELS;
#if NCA_ALIVE_CHANNEL >= 0
            alive_cells[cell] = (uint8_t)alive(state, y, x);
#endif
            memcpy(out, in, sizeof(float) * NCA_CHANNELS);
            if (fire_mask && !fire_mask[cell]) continue;
            perceive(state, y, x);
            const float *dx = update();
            for (int c = NCA_FIXED; c < NCA_CHANNELS; c++) out[c] = in[c] + dx[c - NCA_FIXED];
        }
    }
#if NCA_ALIVE_CHANNEL >= 0
    /* A cell's verdict reads its neighbours' updated alpha: decide all before clearing any. */
    for (int y = 0; y < NCA_HEIGHT; y++)
        for (int x = 0; x < NCA_WIDTH; x++) {
            const size_t cell = (size_t)y * NCA_WIDTH + x;
            alive_cells[cell] = alive_cells[cell] && alive(next, y, x);
        }
    for (size_t cell = 0; cell < NCA_CELLS; cell++)
        if (!alive_cells[cell])
            memset(next + cell * NCA_CHANNELS + NCA_FIXED, 0,
                   sizeof(float) * (NCA_CHANNELS - NCA_FIXED));
#endif
}
