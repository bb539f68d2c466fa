/* Grow the exported NCA from its seed and print its alive cells (written by nca export).
 * Build: cc -std=c99 -O2 -o example example.c nca.c -lm
 * Run:   ./example [steps]   (default NCA_EXAMPLE_STEPS) */
#include <stdio.h>
#include <stdlib.h>

#include "nca.h"
#include "nca_seed.h"

static float grid[2][NCA_HEIGHT * NCA_WIDTH * NCA_CHANNELS];
static uint8_t fire[NCA_HEIGHT * NCA_WIDTH];

/* xorshift32: a fire mask anyone can reproduce, with no library. */
static uint32_t random_state = 2463534242u;
static float uniform(void) {
    random_state ^= random_state << 13;
    random_state ^= random_state >> 17;
    random_state ^= random_state << 5;
    return (float)(random_state >> 8) / 16777216.0f;
}

int main(int argc, char **argv) {
    const int steps = argc > 1 ? atoi(argv[1]) : NCA_EXAMPLE_STEPS;
    for (int i = 0; i < NCA_SEED_ENTRIES; i++) grid[0][NCA_SEED_INDEX[i]] = NCA_SEED_VALUE[i];
    int now = 0;
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < NCA_HEIGHT * NCA_WIDTH; i++) fire[i] = uniform() < NCA_FIRE_RATE;
        nca_step(grid[now], grid[1 - now], fire);
        now = 1 - now;
    }
    const int shown = NCA_ALIVE_CHANNEL >= 0 ? NCA_ALIVE_CHANNEL : NCA_FIXED;
    printf("after %d steps, channel %d (# above 0.5, + above 0.1):\n", steps, shown);
    for (int y = 0; y < NCA_HEIGHT; y++) {
        for (int x = 0; x < NCA_WIDTH; x++) {
            const float v = grid[now][(y * NCA_WIDTH + x) * NCA_CHANNELS + shown];
            putchar(v > 0.5f ? '#' : v > 0.1f ? '+' : '.');
        }
        putchar('\n');
    }
    printf("memory: %d bytes of weights, %d per state, %d of scratch\n", NCA_WEIGHT_BYTES,
           NCA_STATE_BYTES, NCA_SCRATCH_BYTES);
    return 0;
}
