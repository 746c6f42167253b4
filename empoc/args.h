// args.h: command-line flag values, shared by train_empo.c and train_empo.cu. A value that is not
// a whole number (or number) in range is one clear error line naming the flag, and exit 1.
#ifndef ARGS_H
#define ARGS_H

#include <stdio.h>
#include <stdlib.h>

static int arg_int(const char *flag, const char *v, int lo, int hi) {
    char *end; long x = strtol(v, &end, 10);
    if (*v == 0 || *end != 0 || x < lo || x > hi) {
        fprintf(stderr, "error: flag %s: '%s' is not an integer in [%d, %d]\n", flag, v, lo, hi);
        exit(1);
    }
    return (int)x;
}
static float arg_float(const char *flag, const char *v, float lo, float hi) {
    char *end; float x = strtof(v, &end);
    if (*v == 0 || *end != 0 || !(x >= lo && x <= hi)) {
        fprintf(stderr, "error: flag %s: '%s' is not a number in [%g, %g]\n", flag, v, lo, hi);
        exit(1);
    }
    return x;
}

#endif // ARGS_H
