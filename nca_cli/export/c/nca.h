/* A trained neural cellular automaton's step, in dependency-free C99 (written by nca export).
 *
 * A state is one grid of NCA_HEIGHT x NCA_WIDTH cells with NCA_CHANNELS floats each, stored
 * cell by cell (row-major, channels last): state[(y * NCA_WIDTH + x) * NCA_CHANNELS + c].
 * The sizes, the weights and the memory they take are in nca_model.h. */
#ifndef NCA_H
#define NCA_H

#include <stdint.h>

#include "nca_model.h"

/* One step: reads `state`, writes `next` (another buffer of the same size). A cell whose
 * `fire_mask` entry is 0 keeps its state this step (before dead cells are cleared); pass
 * NULL to fire every cell. Draw the mask at random with probability NCA_FIRE_RATE to run
 * the NCA as it was trained. Not reentrant: it uses NCA_SCRATCH_BYTES of static memory. */
void nca_step(const float *state, float *next, const uint8_t *fire_mask);

#endif
