// args.h: command-line flags from one table. Each row names a flag, its kind, the config field it
// sets, its range, its defaults and its help; the same rows drive parsing, the defaults and -h, so
// the three cannot drift apart. A bad value is one error line naming the flag, and exit 1; so is a
// flag that the chosen mode would ignore. C that also compiles as C++.
#ifndef EMPOC_ARGS_H
#define EMPOC_ARGS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef enum {
    FLAG_INT,      // int field, in [lo, hi]
    FLAG_FLOAT,    // float field, in [lo, hi]
    FLAG_STR,      // const char * field (a path or text)
    FLAG_CHOICE,   // int field: the index of the value in `choices` ("a|b|c")
    FLAG_SWITCH,   // int field set to 1; takes no value
    FLAG_HEADING,  // not a flag: a heading of -h
} FlagKind;

typedef struct {
    const char *name;     // "-G", "--eval-n"; for FLAG_HEADING the heading's text
    FlagKind kind;
    size_t offset;        // offsetof(the config struct, field)
    double lo, hi;        // FLAG_INT / FLAG_FLOAT range
    const char *choices;  // FLAG_CHOICE: "empo|grpo|ttrl"
    double def[2];        // defaults (FLAG_INT/FLOAT/CHOICE): [0] with -m, [1] for the embedded default run
    const char *sdef[2];  // FLAG_STR defaults; for other kinds, the text -h shows when it is not def[] (e.g. "log G")
    unsigned modes;       // the modes (bit i = mode i) in which the flag means something
    int sets_mode;        // >= 0: giving the flag switches the run to this mode
    const char *meta;     // the value's name in -h: "INT", "FILE"
    const char *help;
} Flag;

static inline const Flag *flag_find(const Flag *t, int n, const char *name) {
    for (int i = 0; i < n; i++)
        if (t[i].kind != FLAG_HEADING && !strcmp(t[i].name, name)) return &t[i];
    return NULL;
}

// Sets every field to its default: which = 0 for real models, 1 for the embedded default run.
static inline void flags_defaults(const Flag *t, int n, void *cfg, int which) {
    char *base = (char *)cfg;
    for (int i = 0; i < n; i++) {
        const Flag *f = &t[i];
        if (f->kind == FLAG_INT || f->kind == FLAG_CHOICE || f->kind == FLAG_SWITCH)
            *(int *)(base + f->offset) = (int)f->def[which];
        else if (f->kind == FLAG_FLOAT) *(float *)(base + f->offset) = (float)f->def[which];
        else if (f->kind == FLAG_STR) *(const char **)(base + f->offset) = f->sdef[which];
    }
}

// The index of v in "a|b|c", or -1.
static inline int flag_choice(const char *choices, const char *v) {
    int k = 0;
    size_t n = strlen(v);
    for (const char *c = choices; *c; k++) {
        const char *e = strchr(c, '|');
        size_t len = e ? (size_t)(e - c) : strlen(c);
        if (len == n && !strncmp(c, v, n)) return k;
        if (!e) break;
        c = e + 1;
    }
    return -1;
}

static inline void flag_set(const Flag *f, const char *v, void *cfg) {
    char *field = (char *)cfg + f->offset;
    if (f->kind == FLAG_SWITCH) {
        *(int *)field = 1;
    } else if (f->kind == FLAG_STR) {
        *(const char **)field = v;
    } else if (f->kind == FLAG_CHOICE) {
        int k = flag_choice(f->choices, v);
        if (k < 0) {
            fprintf(stderr, "error: flag %s: '%s' is not one of %s\n", f->name, v, f->choices);
            exit(1);
        }
        *(int *)field = k;
    } else {
        char *end;
        double x = f->kind == FLAG_INT ? (double)strtol(v, &end, 10) : (double)strtof(v, &end);
        if (*v == 0 || *end != 0 || !(x >= f->lo && x <= f->hi)) {
            if (f->kind == FLAG_INT)
                fprintf(stderr, "error: flag %s: '%s' is not an integer in [%.0f, %.0f]\n", f->name, v, f->lo, f->hi);
            else fprintf(stderr, "error: flag %s: '%s' is not a number in [%g, %g]\n", f->name, v, f->lo, f->hi);
            exit(1);
        }
        if (f->kind == FLAG_INT) *(int *)field = (int)x;
        else *(float *)field = (float)x;
    }
}

// Walks argv once without setting anything: every word must be a known flag, with its value if it
// takes one. Returns the mode that the mode flags choose (default_mode if none), and sets *has[i] when
// table row i is given. has has n entries.
static inline int flags_scan(const Flag *t, int n, int argc, char **argv, int default_mode, int *has) {
    int mode = default_mode;
    memset(has, 0, (size_t)n * sizeof(int));
    for (int i = 1; i < argc; i++) {
        const Flag *f = flag_find(t, n, argv[i]);
        if (!f) {
            if (argv[i][0] == '-') fprintf(stderr, "error: unknown flag %s (see -h)\n", argv[i]);
            else fprintf(stderr, "error: unexpected argument '%s': every option is a flag (see -h)\n", argv[i]);
            exit(1);
        }
        if (f->kind != FLAG_SWITCH && i + 1 >= argc) {
            fprintf(stderr, "error: flag %s needs a value (%s; see -h)\n", f->name, f->meta ? f->meta : "a value");
            exit(1);
        }
        if (f->kind != FLAG_SWITCH) i++;
        has[f - t] = 1;
        if (f->sets_mode >= 0) {
            if (mode != default_mode && mode != f->sets_mode) {
                fprintf(stderr, "error: flag %s: only one mode at a time (see -h)\n", f->name);
                exit(1);
            }
            mode = f->sets_mode;
        }
    }
    return mode;
}

// Sets the fields of every flag on the command line, refusing the ones that `mode` ignores.
// mode_names[i] (i < n_modes) is how the messages call mode i.
static inline void flags_apply(const Flag *t, int n, int argc, char **argv, int mode, const char *const *mode_names,
                               int n_modes, void *cfg) {
    for (int i = 1; i < argc; i++) {
        const Flag *f = flag_find(t, n, argv[i]);
        const char *v = f->kind == FLAG_SWITCH ? NULL : argv[++i];
        if (!(f->modes >> mode & 1)) {
            fprintf(stderr, "error: flag %s has no effect in %s (it applies to:", f->name, mode_names[mode]);
            for (int k = 0; k < n_modes; k++)
                if (f->modes >> k & 1) fprintf(stderr, " %s", mode_names[k]);
            fprintf(stderr, ")\n");
            exit(1);
        }
        flag_set(f, v, cfg);
    }
}

// -h from the table: one line per flag with its meta, help and defaults ("real / embedded default").
static inline void flags_usage(FILE *out, const Flag *t, int n) {
    for (int i = 0; i < n; i++) {
        const Flag *f = &t[i];
        if (f->kind == FLAG_HEADING) {
            fprintf(out, "\n%s\n", f->name);
            continue;
        }
        char lhs[64], def[64] = "";
        snprintf(lhs, sizeof lhs, "%s %s", f->name, f->kind == FLAG_SWITCH ? "" : f->meta ? f->meta : "");
        if (f->sdef[0] && f->kind != FLAG_STR) snprintf(def, sizeof def, "%s", f->sdef[0]);
        else if (f->kind == FLAG_STR) {
            if (f->sdef[0] && f->sdef[1] && strcmp(f->sdef[0], f->sdef[1]))
                snprintf(def, sizeof def, "%s / %s", f->sdef[0], f->sdef[1]);
            else if (f->sdef[0] || f->sdef[1]) snprintf(def, sizeof def, "%s", f->sdef[0] ? f->sdef[0] : f->sdef[1]);
        } else if (f->kind == FLAG_CHOICE) {
            char a[32], b[32];
            for (int w = 0; w < 2; w++) {
                const char *c = f->choices;
                for (int k = 0; k < (int)f->def[w] && strchr(c, '|'); k++) c = strchr(c, '|') + 1;
                const char *e = strchr(c, '|');
                size_t len = e ? (size_t)(e - c) : strlen(c);
                snprintf(w ? b : a, sizeof a, "%.*s", (int)len, c);
            }
            snprintf(def, sizeof def, strcmp(a, b) ? "%s / %s" : "%s", a, b);
        } else if (f->kind != FLAG_SWITCH) {
            if (f->def[0] == f->def[1]) snprintf(def, sizeof def, "%g", f->def[0]);
            else snprintf(def, sizeof def, "%g / %g", f->def[0], f->def[1]);
        }
        // the help may hold several lines: the first shares the row with the default
        const char *h = f->help, *nl = strchr(h, '\n');
        int first = nl ? (int)(nl - h) : (int)strlen(h);
        if (def[0]) fprintf(out, "  %-20s %-64.*s %s\n", lhs, first, h, def);
        else fprintf(out, "  %-20s %.*s\n", lhs, first, h);
        while (nl) {
            h = nl + 1;
            nl = strchr(h, '\n');
            int len = nl ? (int)(nl - h) : (int)strlen(h);
            fprintf(out, "  %-20s %.*s\n", "", len, h);
        }
    }
}

// For small tools without a table (train_empo.cu's benchmark): one value, checked the same way.
static inline int arg_int(const char *flag, const char *v, int lo, int hi) {
    Flag f = {flag, FLAG_INT, 0, (double)lo, (double)hi, NULL, {0, 0}, {NULL, NULL}, ~0u, -1, NULL, ""};
    int x;
    flag_set(&f, v, &x);
    return x;
}
static inline float arg_float(const char *flag, const char *v, float lo, float hi) {
    Flag f = {flag, FLAG_FLOAT, 0, (double)lo, (double)hi, NULL, {0, 0}, {NULL, NULL}, ~0u, -1, NULL, ""};
    float x;
    flag_set(&f, v, &x);
    return x;
}

#endif // EMPOC_ARGS_H
