/*
 * fake_nvml.c - a stand-in libnvidia-ml.so.1 for the tests of amdgpu_top_web.
 *
 * Built against NVIDIA's own nvml.h (PyPI wheel nvidia-nvml-dev, fetched at
 * test time; never committed) so every prototype and struct layout is the
 * header's.  The GPUs it reports come from a scenario file, path in env
 * FAKE_NVML_SCENARIO, read at nvmlInit and re-read whenever its inode, size or
 * mtime changes (checked on every device/system call), so a test can change
 * the machine mid-run.  Format: tests/nvml/README.md.  Behaviour follows the
 * nvml.h comments (return codes, INSUFFICIENT_SIZE handshakes, version checks).
 *
 * Debug: env FAKE_NVML_LOG=path appends one line per API call,
 *   "<function> gpu=<index> <key>=<value>... rc=<nvmlReturn_t>"
 * (lastSeen=... is the 64-bit value as received).
 *
 * Build variants (compile-time, since a scenario cannot remove an export):
 *   FAKE_NO_MEMORY_INFO_V2              no nvmlDeviceGetMemoryInfo_v2
 *   FAKE_NO_PROCS_V3                    no nvmlDevice*RunningProcesses_v3
 *   FAKE_NO_PROCS_V2                    no nvmlDevice*RunningProcesses_v2
 *   FAKE_NO_PROCESSES_UTILIZATION_INFO  no nvmlDeviceGetProcessesUtilizationInfo
 *   FAKE_NO_PROCESS_DETAIL_LIST         no nvmlDeviceGetRunningProcessDetailList
 *   FAKE_NO_CONF_COMPUTE                no nvmlDeviceGetConfComputeMemSizeInfo
 *   FAKE_NO_TEMPERATURE_V               no nvmlDeviceGetTemperatureV
 *   FAKE_NO_FAN_SPEED_RPM               no nvmlDeviceGetFanSpeedRPM
 *   FAKE_NO_NUM_FANS                    no nvmlDeviceGetNumFans
 *   FAKE_NO_CLOCKS_EVENT_REASONS        no nvmlDeviceGet{Current,Supported}ClocksEventReasons
 *   FAKE_NO_JPG_UTILIZATION             no nvmlDeviceGetJpgUtilization
 *   FAKE_NO_PCI_INFO_V3                 no nvmlDeviceGetPciInfo_v3 (_v2 and v1 stay)
 *   FAKE_EARLY_R535                     early R535 driver: _v3 process calls fill
 *       32-byte entries (pid, pad, usedGpuMemory, gpuInstanceId,
 *       computeInstanceId, usedGpuCcProtectedMemory); implies
 *       FAKE_NO_PROCESS_DETAIL_LIST, FAKE_NO_PROCESSES_UTILIZATION_INFO,
 *       FAKE_NO_TEMPERATURE_V, FAKE_NO_FAN_SPEED_RPM (those came later)
 *       while nvmlDeviceGetConfComputeMemSizeInfo stays.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <nvml.h>

#ifdef FAKE_EARLY_R535
#  ifndef FAKE_NO_PROCESS_DETAIL_LIST
#    define FAKE_NO_PROCESS_DETAIL_LIST
#  endif
#  ifndef FAKE_NO_PROCESSES_UTILIZATION_INFO
#    define FAKE_NO_PROCESSES_UTILIZATION_INFO
#  endif
#  ifndef FAKE_NO_TEMPERATURE_V
#    define FAKE_NO_TEMPERATURE_V
#  endif
#  ifndef FAKE_NO_FAN_SPEED_RPM
#    define FAKE_NO_FAN_SPEED_RPM
#  endif
#  ifdef FAKE_NO_CONF_COMPUTE
#    error "FAKE_EARLY_R535 needs nvmlDeviceGetConfComputeMemSizeInfo"
#  endif
#endif

/* Struct sizes from the facts sheet (gcc, x86-64): the ctypes layouts of the
 * program and of pynvml are checked against these. */
_Static_assert(sizeof(nvmlPciInfo_t) == 68, "nvmlPciInfo_t");
_Static_assert(sizeof(nvmlUtilization_t) == 8, "nvmlUtilization_t");
_Static_assert(sizeof(nvmlMemory_t) == 24, "nvmlMemory_t");
_Static_assert(sizeof(nvmlMemory_v2_t) == 40, "nvmlMemory_v2_t");
_Static_assert(sizeof(nvmlProcessInfo_v1_t) == 16, "nvmlProcessInfo_v1_t");
_Static_assert(sizeof(nvmlProcessInfo_v2_t) == 24, "nvmlProcessInfo_v2_t");
_Static_assert(sizeof(nvmlProcessInfo_t) == 24, "nvmlProcessInfo_t");
_Static_assert(sizeof(nvmlProcessDetail_v1_t) == 32, "nvmlProcessDetail_v1_t");
_Static_assert(sizeof(nvmlProcessDetailList_v1_t) == 24, "nvmlProcessDetailList_v1_t");
_Static_assert(sizeof(nvmlProcessUtilizationSample_t) == 32, "nvmlProcessUtilizationSample_t");
_Static_assert(sizeof(nvmlProcessUtilizationInfo_v1_t) == 40, "nvmlProcessUtilizationInfo_v1_t");
_Static_assert(sizeof(nvmlProcessesUtilizationInfo_v1_t) == 24, "nvmlProcessesUtilizationInfo_v1_t");
_Static_assert(sizeof(nvmlTemperature_v1_t) == 12, "nvmlTemperature_v1_t");
_Static_assert(sizeof(nvmlFanSpeedInfo_v1_t) == 12, "nvmlFanSpeedInfo_v1_t");
_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t");
_Static_assert(sizeof(nvmlEventData_t) == 32, "nvmlEventData_t");
_Static_assert(nvmlMemory_v2 == 0x02000028, "nvmlMemory_v2");
_Static_assert(nvmlProcessesUtilizationInfo_v1 == 0x01000018, "nvmlProcessesUtilizationInfo_v1");
_Static_assert(nvmlFanSpeedInfo_v1 == 0x0100000C, "nvmlFanSpeedInfo_v1");
_Static_assert(nvmlTemperature_v1 == 0x0100000C, "nvmlTemperature_v1");
_Static_assert(nvmlProcessDetailList_v1 == 0x01000018, "nvmlProcessDetailList_v1");

#define MAX_GPUS 64
#define NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL

/* ------------------------------------------------------------ errors ---- */
static const struct { nvmlReturn_t code; const char *name; const char *text; } ERRS[] = {
    {NVML_SUCCESS, "SUCCESS", "Success"},
    {NVML_ERROR_UNINITIALIZED, "UNINITIALIZED", "Uninitialized"},
    {NVML_ERROR_INVALID_ARGUMENT, "INVALID_ARGUMENT", "Invalid Argument"},
    {NVML_ERROR_NOT_SUPPORTED, "NOT_SUPPORTED", "Not Supported"},
    {NVML_ERROR_NO_PERMISSION, "NO_PERMISSION", "Insufficient Permissions"},
    {NVML_ERROR_ALREADY_INITIALIZED, "ALREADY_INITIALIZED", "Already Initialized"},
    {NVML_ERROR_NOT_FOUND, "NOT_FOUND", "Not Found"},
    {NVML_ERROR_INSUFFICIENT_SIZE, "INSUFFICIENT_SIZE", "Insufficient Size"},
    {NVML_ERROR_INSUFFICIENT_POWER, "INSUFFICIENT_POWER", "Insufficient External Power"},
    {NVML_ERROR_DRIVER_NOT_LOADED, "DRIVER_NOT_LOADED", "Driver Not Loaded"},
    {NVML_ERROR_TIMEOUT, "TIMEOUT", "Timeout"},
    {NVML_ERROR_IRQ_ISSUE, "IRQ_ISSUE", "Interrupt Request Issue"},
    {NVML_ERROR_LIBRARY_NOT_FOUND, "LIBRARY_NOT_FOUND", "NVML Shared Library Not Found"},
    {NVML_ERROR_FUNCTION_NOT_FOUND, "FUNCTION_NOT_FOUND", "Function Not Found"},
    {NVML_ERROR_CORRUPTED_INFOROM, "CORRUPTED_INFOROM", "Corrupted infoROM"},
    {NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST", "GPU is lost"},
    {NVML_ERROR_RESET_REQUIRED, "RESET_REQUIRED", "GPU requires reset"},
    {NVML_ERROR_OPERATING_SYSTEM, "OPERATING_SYSTEM", "GPU access blocked by the operating system"},
    {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "LIB_RM_VERSION_MISMATCH", "Driver/library version mismatch"},
    {NVML_ERROR_IN_USE, "IN_USE", "In use by another client"},
    {NVML_ERROR_MEMORY, "MEMORY", "Insufficient Memory"},
    {NVML_ERROR_NO_DATA, "NO_DATA", "No data"},
    {NVML_ERROR_VGPU_ECC_NOT_SUPPORTED, "VGPU_ECC_NOT_SUPPORTED",
     "The requested vgpu operation is not available on target device, because ECC is enabled"},
    {NVML_ERROR_INSUFFICIENT_RESOURCES, "INSUFFICIENT_RESOURCES", "Insufficient Resources"},
    {NVML_ERROR_FREQ_NOT_SUPPORTED, "FREQ_NOT_SUPPORTED", "Frequency not supported"},
    {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "ARGUMENT_VERSION_MISMATCH", "Argument version mismatch"},
    {NVML_ERROR_DEPRECATED, "DEPRECATED", "Deprecated"},
    {NVML_ERROR_NOT_READY, "NOT_READY", "Not ready"},
    {NVML_ERROR_GPU_NOT_FOUND, "GPU_NOT_FOUND", "GPU not found"},
    {NVML_ERROR_INVALID_STATE, "INVALID_STATE", "Invalid state"},
    {NVML_ERROR_RESET_TYPE_NOT_SUPPORTED, "RESET_TYPE_NOT_SUPPORTED", "Reset type not supported"},
    {NVML_ERROR_UNKNOWN, "UNKNOWN", "Unknown Error"},
};
#define N_ERRS (sizeof ERRS / sizeof ERRS[0])

/* "NOT_SUPPORTED", "NVML_ERROR_NOT_SUPPORTED" or "3" -> code; -1 if unknown. */
static long err_code(const char *s)
{
    char *end;
    if (!strncmp(s, "NVML_ERROR_", 11))
        s += 11;
    for (size_t i = 0; i < N_ERRS; i++)
        if (!strcmp(s, ERRS[i].name))
            return (long)ERRS[i].code;
    errno = 0;
    long v = strtol(s, &end, 0);
    if (*s && !*end && !errno && v >= 0)
        return v;
    return -1;
}

/* ---------------------------------------------------------- scenario ---- */
/* Per-GPU keys and their defaults (an H100 80GB HBM3 SXM at idle).  Type 'u':
 * unsigned number, "na" (0xFFFFFFFFFFFFFFFF) or a comma list of them (per fan,
 * or "current,pending"); 's': string.  Any value may be "err:<NAME|number>":
 * the call(s) reading it return that nvmlReturn_t.  NULL default = computed.
 * tests/nvml_support.py's GPU_DEFAULTS must list the same values. */
typedef struct { const char *key; char type; const char *def; } keydef_t;
static const keydef_t GPU_KEYS[] = {
    {"name", 's', "NVIDIA H100 80GB HBM3"},
    {"uuid", 's', NULL},                    /* GPU-6a2e1f0c-3d4b-4e5f-8a9b-<index %012x> */
    {"pci", 's', NULL},                     /* DGX H100 bus ids, see default_pci() */
    {"pci_device_id", 'u', "0x233010DE"},
    {"pci_subsystem_id", 'u', "0x16C110DE"},
    {"handle", 's', "ok"},                  /* or err:NO_PERMISSION ... */
    {"lost", 'u', "0"},                     /* 1: every call on it -> GPU_IS_LOST */
    {"proc_util", 's', "ok"},               /* or err:NOT_SUPPORTED: no per-process utilisation */
    {"hang_ms", 'u', "0"},                  /* UtilizationRates sleeps this long (outside the lock) */
    {"util_gpu", 'u', "0"},
    {"util_mem", 'u', "0"},
    {"clock_graphics", 'u', "345"},
    {"clock_sm", 'u', "345"},
    {"clock_mem", 'u', "2619"},
    {"clock_video", 'u', "765"},
    {"max_clock_graphics", 'u', "1980"},
    {"max_clock_sm", 'u', "1980"},
    {"max_clock_mem", 'u', "2619"},
    {"max_clock_video", 'u', "1545"},
    {"temp_gpu", 'u', "33"},
    {"temp_gpu_max", 'u', "36"},            /* sensor NVML_TEMPERATURE_GPU_MAX (1) */
    {"temp_mem", 'u', "41"},                /* field NVML_FI_DEV_MEMORY_TEMP (82) */
    {"temp_threshold_shutdown", 'u', "92"},
    {"temp_threshold_slowdown", 'u', "89"},
    {"temp_threshold_mem_max", 'u', "95"},
    {"temp_threshold_gpu_max", 'u', "87"},
    {"fan_speed", 'u', "err:NOT_SUPPORTED"},  /* %, comma list per fan */
    {"fan_rpm", 'u', "err:NOT_SUPPORTED"},    /* RPM, comma list per fan */
    {"num_fans", 'u', "err:NOT_SUPPORTED"},
    {"power_usage_mw", 'u', "71234"},
    {"power_limit_mw", 'u', "700000"},        /* enforced */
    {"power_mgmt_limit_mw", 'u', "700000"},
    {"power_default_limit_mw", 'u', "700000"},
    {"power_min_limit_mw", 'u', "200000"},
    {"power_max_limit_mw", 'u', "700000"},
    {"energy_mj", 'u', "123456789012"},
    {"mem_total", 'u', "85520809984"},       /* 81559 MiB */
    {"mem_reserved", 'u', "569376768"},      /* 543 MiB */
    {"mem_used", 'u', "7340032"},            /* v2 "used": allocated, without reserved */
    {"mem_v1_used", 'u', NULL},              /* default mem_used + mem_reserved */
    {"mem_v1_free", 'u', NULL},              /* default mem_total - v1 used */
    {"mem_v2_bad_version", 'u', "err:ARGUMENT_VERSION_MISMATCH"},  /* version neither 2 nor nvmlMemory_v2 */
    {"pcie_gen", 'u', "5"},
    {"pcie_width", 'u', "16"},
    {"pcie_max_gen", 'u', "5"},
    {"pcie_max_width", 'u', "16"},
    {"pcie_tx_kbs", 'u', "1234"},
    {"pcie_rx_kbs", 'u', "5678"},
    {"pstate", 'u', "0"},
    {"clocks_event_reasons", 'u', "0x1"},
    {"supported_clocks_event_reasons", 'u', "0x1FF"},
    {"enc_util", 'u', "0"},
    {"enc_period_us", 'u', "167000"},
    {"dec_util", 'u', "0"},
    {"dec_period_us", 'u', "167000"},
    {"jpg_util", 'u', "0"},
    {"jpg_period_us", 'u', "167000"},
    {"mig_mode", 'u', "err:NOT_SUPPORTED"},   /* "current[,pending]" */
    {"mig_max_count", 'u', NULL},            /* default 7 while mig_mode is 1, else 0 */
    {"ecc_mode", 'u', "err:NOT_SUPPORTED"},   /* "current[,pending]"; 0: counts NOT_SUPPORTED */
    {"ecc_corrected_volatile", 'u', "0"},
    {"ecc_uncorrected_volatile", 'u', "0"},
    {"ecc_corrected_aggregate", 'u', "0"},
    {"ecc_uncorrected_aggregate", 'u', "0"},
    {"cc_protected_kib", 'u', "0"},
    {"cc_unprotected_kib", 'u', NULL},       /* default mem_total / 1024 */
    {"grow_after_sizing", 'u', NULL},        /* default: option grow_after_sizing */
    {"grow_lists", 's', "compute,graphics,mps"},
};
#define N_GPU_KEYS (sizeof GPU_KEYS / sizeof GPU_KEYS[0])

static const keydef_t OPT_KEYS[] = {
    {"driver_version", 's', "580.95.05"},
    {"nvml_version", 's', "13.580.95.05"},
    {"cuda_version", 'u', "13000"},
    {"init", 's', "ok"},                     /* or err:DRIVER_NOT_LOADED ... */
    {"grow_after_sizing", 'u', "0"},
    {"pcie_throughput_delay_ms", 'u', "20"}, /* the real call samples for 20 ms */
};
#define N_OPT_KEYS (sizeof OPT_KEYS / sizeof OPT_KEYS[0])

/* DGX H100 GPU bus numbers for the defaults of index 0..7; then index*0x10. */
static const unsigned DEFAULT_BUS[] = {0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB};

typedef struct { char *k, *v; } kv_t;
typedef struct { kv_t *a; int n, cap; } kvlist_t;

enum { L_COMPUTE, L_GRAPHICS, L_MPS, N_LISTS };
static const char *LIST_NAMES[N_LISTS] = {"compute", "graphics", "mps"};

typedef struct {
    int gpu, list;
    unsigned pid, gi, ci;
    unsigned long long mem, cc;
} proc_t;

typedef struct {
    int gpu, ts_now;         /* ts_now: timestamp = now + ts (µs) at call time */
    unsigned pid, sm, mem, enc, dec, jpg, ofa;
    long long ts;
} usamp_t;

typedef struct { unsigned pid; char *name; } pname_t;

/* A MIG device (one compute instance) of GPU gpu at MIG index idx. */
#define MAX_MIG 8
typedef struct {
    int gpu, idx;
    unsigned gi, ci, gi_slices, ci_slices, sm_count;
    unsigned long long mem_total, mem_used;
    char *name, *uuid;
} mig_t;

typedef struct {
    char *text;
    int ngpus;
    int present[MAX_GPUS];
    kvlist_t gpu[MAX_GPUS];
    kvlist_t opt;
    proc_t *procs; int nprocs, cprocs;
    usamp_t *us; int nus, cus;
    pname_t *pn; int npn, cpn;
    mig_t *migs; int nmigs, cmigs;
} scen_t;

struct nvmlDevice_st { unsigned idx; };
static struct nvmlDevice_st DEVS[MAX_GPUS];
static struct nvmlDevice_st MIGS[MAX_GPUS][MAX_MIG];   /* MIG device handles */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned g_refcount;
static scen_t S;                            /* current scenario */
static struct { int have; dev_t dev; ino_t ino; off_t size; struct timespec mtim, ctim; } g_stamp;
static unsigned g_extra[MAX_GPUS][N_LISTS]; /* grow_after_sizing entries so far */
static char g_defbuf[MAX_GPUS][2][96];      /* computed defaults: uuid, pci */

static void warnf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void warnf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("fake_nvml: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

#define PUSH(arr, n, cap, item) do {                                        \
        if ((n) == (cap)) {                                                 \
            int nc_ = (cap) ? (cap) * 2 : 16;                               \
            void *p_ = realloc((arr), (size_t)nc_ * sizeof *(arr));         \
            if (!p_) { warnf("out of memory"); abort(); }                   \
            (arr) = p_; (cap) = nc_;                                        \
        }                                                                   \
        (arr)[(n)++] = (item);                                              \
    } while (0)

static void scen_free(scen_t *s)
{
    for (int i = 0; i < MAX_GPUS; i++)
        free(s->gpu[i].a);
    free(s->opt.a);
    free(s->procs);
    free(s->us);
    free(s->pn);
    free(s->migs);
    free(s->text);
    memset(s, 0, sizeof *s);
}

static const char *kv_find(const kvlist_t *l, const char *k)
{
    for (int i = l->n - 1; i >= 0; i--)       /* last one wins */
        if (!strcmp(l->a[i].k, k))
            return l->a[i].v;
    return NULL;
}

static const keydef_t *keydef(const keydef_t *t, size_t n, const char *k)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].key, k))
            return &t[i];
    return NULL;
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void pct_decode(char *s)
{
    char *w = s;
    for (char *r = s; *r; r++) {
        if (r[0] == '%' && hexval(r[1]) >= 0 && hexval(r[2]) >= 0) {
            *w++ = (char)(hexval(r[1]) * 16 + hexval(r[2]));
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    *w = 0;
}

/* Next whitespace-separated word of *p, NUL-terminated in place; a word
 * key="a b" keeps its quoted spaces (quotes removed). NULL at end of line. */
static char *next_word(char **p)
{
    char *s = *p;
    while (*s == ' ' || *s == '\t')
        s++;
    if (!*s) {
        *p = s;
        return NULL;
    }
    char *start = s, *w = s;
    int inq = 0;
    for (; *s && (inq || (*s != ' ' && *s != '\t')); s++) {
        if (*s == '"') {
            inq = !inq;
            continue;
        }
        *w++ = *s;
    }
    if (*s)
        s++;
    *w = 0;
    *p = s;
    return start;
}

/* One number of a 'u' value: decimal/0x..., or "na". */
static int parse_num(const char *s, unsigned long long *out)
{
    char *end;
    if (!strcmp(s, "na")) {
        *out = NOT_AVAILABLE_ULL;
        return 1;
    }
    if (!*s || *s == '-')
        return 0;
    errno = 0;
    *out = strtoull(s, &end, 0);
    return !*end && !errno;
}

/* "err:X" -> 1 and *rc; 0 if not an error value; -1 if a bad error name. */
static int value_err(const char *v, nvmlReturn_t *rc)
{
    if (strncmp(v, "err:", 4))
        return 0;
    long c = err_code(v + 4);
    if (c < 0)
        return -1;
    *rc = (nvmlReturn_t)c;
    return 1;
}

static int check_u_value(const char *v)
{
    nvmlReturn_t rc;
    int e = value_err(v, &rc);
    if (e)
        return e > 0;
    char buf[256];
    if (strlen(v) >= sizeof buf)
        return 0;
    strcpy(buf, v);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        unsigned long long x;
        if (!parse_num(tok, &x))
            return 0;
    }
    return buf[0] != 0;
}

static int parse_pci(const char *s, unsigned *dom, unsigned *bus, unsigned *dev)
{
    unsigned a, b, c, f;
    int n = -1;
    if (sscanf(s, "%x:%x:%x.%x%n", &a, &b, &c, &f, &n) == 4 && n == (int)strlen(s)) {
        *dom = a; *bus = b; *dev = c;
        return 1;
    }
    n = -1;
    if (sscanf(s, "%x:%x:%x%n", &a, &b, &c, &n) == 3 && n == (int)strlen(s)) {
        *dom = a; *bus = b; *dev = c;
        return 1;
    }
    n = -1;
    if (sscanf(s, "%x:%x.%x%n", &b, &c, &f, &n) == 3 && n == (int)strlen(s)) {
        *dom = 0; *bus = b; *dev = c;
        return 1;
    }
    return 0;
}

static int parse_kv(char *word, char **k, char **v)
{
    char *eq = strchr(word, '=');
    if (!eq || eq == word)
        return 0;
    *eq = 0;
    *k = word;
    *v = eq + 1;
    pct_decode(*v);
    return 1;
}

static int check_fail_key(const char *k, const char *v, int line)
{
    if (strncmp(k, "fail.nvml", 9)) {
        warnf("scenario line %d: '%s' is not fail.nvml<Function>", line, k);
        return 0;
    }
    if (err_code(v) < 0) {
        warnf("scenario line %d: %s=%s: unknown nvmlReturn_t", line, k, v);
        return 0;
    }
    return 1;
}

static int check_key(const keydef_t *t, size_t n, const char *k, const char *v, int line)
{
    if (!strncmp(k, "fail.", 5))
        return check_fail_key(k, v, line);
    const keydef_t *d = keydef(t, n, k);
    if (!d) {
        warnf("scenario line %d: unknown key '%s'", line, k);
        return 0;
    }
    nvmlReturn_t rc;
    if (value_err(v, &rc) < 0) {
        warnf("scenario line %d: %s=%s: unknown nvmlReturn_t", line, k, v);
        return 0;
    }
    if (d->type == 'u' && !check_u_value(v)) {
        warnf("scenario line %d: %s=%s: not a number", line, k, v);
        return 0;
    }
    if (!strcmp(k, "pci")) {
        unsigned a, b, c;
        if (!parse_pci(v, &a, &b, &c)) {
            warnf("scenario line %d: pci=%s: not domain:bus:device.function", line, v);
            return 0;
        }
    }
    if ((!strcmp(k, "handle") || !strcmp(k, "proc_util")) && strcmp(v, "ok")
        && value_err(v, &rc) != 1) {
        warnf("scenario line %d: %s=%s: 'ok' or err:<NAME>", line, k, v);
        return 0;
    }
    return 1;
}

static int parse_uint_word(const char *w, int *out, int max)
{
    char *end;
    errno = 0;
    long v = w ? strtol(w, &end, 10) : -1;
    if (!w || *end || errno || v < 0 || v >= max)
        return 0;
    *out = (int)v;
    return 1;
}

/* Fields of a proc/util line (unsigned numbers). */
static int field_u(const char *k, const char *v, const char *want, unsigned long long *out, int line)
{
    if (strcmp(k, want))
        return 0;
    if (!parse_num(v, out)) {
        warnf("scenario line %d: %s=%s: not a number", line, k, v);
        return -1;
    }
    return 1;
}

/* "mig <gpu> index=N gi=G ci=C name=... uuid=... mem_total=B mem_used=B
 * gi_slices=N ci_slices=N sm_count=N": one MIG device (a compute instance). */
static int parse_mig_line(char **p, scen_t *s, int lineno)
{
    mig_t m = {0};
    char *w, *k, *v;
    int have_idx = 0;
    m.gi_slices = m.ci_slices = 1;
    m.sm_count = 16;
    m.mem_total = 10200547328ULL;             /* 9728 MiB: an H100 80GB 1g.10gb */
    if (!parse_uint_word(next_word(p), &m.gpu, MAX_GPUS)) {
        warnf("scenario line %d: mig <gpu> index=N gi=G ci=C ...", lineno);
        return 0;
    }
    while ((w = next_word(p))) {
        unsigned long long x = 0;
        int r = 0;
        if (!parse_kv(w, &k, &v))
            return 0;
        if (!strcmp(k, "name")) { m.name = v; continue; }
        if (!strcmp(k, "uuid")) { m.uuid = v; continue; }
        if ((r = field_u(k, v, "index", &x, lineno)) > 0) {
            if (x >= MAX_MIG) {
                warnf("scenario line %d: mig index 0..%d", lineno, MAX_MIG - 1);
                return 0;
            }
            m.idx = (int)x;
            have_idx = 1;
        }
        else if (!r && (r = field_u(k, v, "gi", &x, lineno)) > 0) m.gi = (unsigned)x;
        else if (!r && (r = field_u(k, v, "ci", &x, lineno)) > 0) m.ci = (unsigned)x;
        else if (!r && (r = field_u(k, v, "gi_slices", &x, lineno)) > 0) m.gi_slices = (unsigned)x;
        else if (!r && (r = field_u(k, v, "ci_slices", &x, lineno)) > 0) m.ci_slices = (unsigned)x;
        else if (!r && (r = field_u(k, v, "sm_count", &x, lineno)) > 0) m.sm_count = (unsigned)x;
        else if (!r && (r = field_u(k, v, "mem_total", &x, lineno)) > 0) m.mem_total = x;
        else if (!r && (r = field_u(k, v, "mem_used", &x, lineno)) > 0) m.mem_used = x;
        if (r <= 0) {
            if (!r)
                warnf("scenario line %d: mig: unknown key '%s'", lineno, k);
            return 0;
        }
    }
    if (!have_idx) {
        warnf("scenario line %d: mig needs index=", lineno);
        return 0;
    }
    for (int i = 0; i < s->nmigs; i++)
        if (s->migs[i].gpu == m.gpu && s->migs[i].idx == m.idx) {
            warnf("scenario line %d: mig %d index=%d given twice", lineno, m.gpu, m.idx);
            return 0;
        }
    PUSH(s->migs, s->nmigs, s->cmigs, m);
    return 1;
}

static int parse_scenario(const char *path, scen_t *s)
{
    memset(s, 0, sizeof *s);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    size_t cap = 4096, len = 0;
    char *text = malloc(cap + 1);
    size_t got;
    while (text && (got = fread(text + len, 1, cap - len, f)) > 0) {
        len += got;
        if (len == cap) {
            cap *= 2;
            char *t = realloc(text, cap + 1);
            if (!t) { free(text); text = NULL; }
            else text = t;
        }
    }
    fclose(f);
    if (!text)
        return -2;
    text[len] = 0;
    s->text = text;

    int lineno = 0, ok = 1, maxgpu = -1;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && ok; line = strtok_r(NULL, "\n", &save)) {
        lineno++;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[ll - 1] = 0;
        char *p = line;
        char *kind = next_word(&p);
        if (!kind || kind[0] == '#')
            continue;
        char *w, *k, *v;
        if (!strcmp(kind, "gpu")) {
            int idx;
            if (!parse_uint_word(next_word(&p), &idx, MAX_GPUS)) {
                warnf("scenario line %d: gpu <index 0..%d>", lineno, MAX_GPUS - 1);
                ok = 0;
                break;
            }
            if (s->present[idx]) {
                warnf("scenario line %d: gpu %d given twice", lineno, idx);
                ok = 0;
                break;
            }
            s->present[idx] = 1;
            if (idx > maxgpu)
                maxgpu = idx;
            while (ok && (w = next_word(&p))) {
                if (!parse_kv(w, &k, &v) || !check_key(GPU_KEYS, N_GPU_KEYS, k, v, lineno)) {
                    if (!strchr(w, '=') && *w)
                        warnf("scenario line %d: '%s' is not key=value", lineno, w);
                    ok = 0;
                    break;
                }
                kv_t kv = {k, v};
                PUSH(s->gpu[idx].a, s->gpu[idx].n, s->gpu[idx].cap, kv);
            }
        } else if (!strcmp(kind, "option")) {
            while (ok && (w = next_word(&p))) {
                if (!parse_kv(w, &k, &v) || !check_key(OPT_KEYS, N_OPT_KEYS, k, v, lineno)) {
                    ok = 0;
                    break;
                }
                if (!strcmp(k, "init") && strcmp(v, "ok")) {
                    nvmlReturn_t rc;
                    if (value_err(v, &rc) != 1) {
                        warnf("scenario line %d: init=%s: 'ok' or err:<NAME>", lineno, v);
                        ok = 0;
                        break;
                    }
                }
                kv_t kv = {k, v};
                PUSH(s->opt.a, s->opt.n, s->opt.cap, kv);
            }
        } else if (!strcmp(kind, "proc")) {
            proc_t pr = {0};
            pr.gi = pr.ci = 0xFFFFFFFFu;
            int have_pid = 0;
            if (!parse_uint_word(next_word(&p), &pr.gpu, MAX_GPUS)) {
                warnf("scenario line %d: proc <gpu> <compute|graphics|mps> pid=...", lineno);
                ok = 0;
                break;
            }
            w = next_word(&p);
            pr.list = -1;
            for (int i = 0; w && i < N_LISTS; i++)
                if (!strcmp(w, LIST_NAMES[i]))
                    pr.list = i;
            if (pr.list < 0) {
                warnf("scenario line %d: proc list must be compute, graphics or mps", lineno);
                ok = 0;
                break;
            }
            while (ok && (w = next_word(&p))) {
                unsigned long long x = 0;
                int r = 0;
                if (!parse_kv(w, &k, &v)) { ok = 0; break; }
                if ((r = field_u(k, v, "pid", &x, lineno)) > 0) { pr.pid = (unsigned)x; have_pid = 1; }
                else if (!r && (r = field_u(k, v, "mem", &x, lineno)) > 0) pr.mem = x;
                else if (!r && (r = field_u(k, v, "gi", &x, lineno)) > 0) pr.gi = (unsigned)x;
                else if (!r && (r = field_u(k, v, "ci", &x, lineno)) > 0) pr.ci = (unsigned)x;
                else if (!r && (r = field_u(k, v, "cc", &x, lineno)) > 0) pr.cc = x;
                if (r <= 0) {
                    if (!r)
                        warnf("scenario line %d: proc: unknown key '%s'", lineno, k);
                    ok = 0;
                }
            }
            if (ok && !have_pid) {
                warnf("scenario line %d: proc needs pid=", lineno);
                ok = 0;
            }
            if (ok)
                PUSH(s->procs, s->nprocs, s->cprocs, pr);
        } else if (!strcmp(kind, "util")) {
            usamp_t u = {0};
            int have_pid = 0;
            u.ts_now = 1;
            if (!parse_uint_word(next_word(&p), &u.gpu, MAX_GPUS)) {
                warnf("scenario line %d: util <gpu> pid=...", lineno);
                ok = 0;
                break;
            }
            while (ok && (w = next_word(&p))) {
                unsigned long long x = 0;
                int r = 0;
                if (!parse_kv(w, &k, &v)) { ok = 0; break; }
                if (!strcmp(k, "ts")) {
                    char *end;
                    if (!strncmp(v, "now", 3)) {
                        u.ts_now = 1;
                        errno = 0;
                        u.ts = v[3] ? strtoll(v + 3, &end, 10) : 0;
                        if (v[3] && (*end || errno || (v[3] != '-' && v[3] != '+'))) {
                            warnf("scenario line %d: ts=%s: now, now-N, now+N or a number", lineno, v);
                            ok = 0;
                        }
                    } else if (parse_num(v, &x)) {
                        u.ts_now = 0;
                        u.ts = (long long)x;
                    } else {
                        warnf("scenario line %d: ts=%s: now, now-N, now+N or a number", lineno, v);
                        ok = 0;
                    }
                    continue;
                }
                if ((r = field_u(k, v, "pid", &x, lineno)) > 0) { u.pid = (unsigned)x; have_pid = 1; }
                else if (!r && (r = field_u(k, v, "sm", &x, lineno)) > 0) u.sm = (unsigned)x;
                else if (!r && (r = field_u(k, v, "mem", &x, lineno)) > 0) u.mem = (unsigned)x;
                else if (!r && (r = field_u(k, v, "enc", &x, lineno)) > 0) u.enc = (unsigned)x;
                else if (!r && (r = field_u(k, v, "dec", &x, lineno)) > 0) u.dec = (unsigned)x;
                else if (!r && (r = field_u(k, v, "jpg", &x, lineno)) > 0) u.jpg = (unsigned)x;
                else if (!r && (r = field_u(k, v, "ofa", &x, lineno)) > 0) u.ofa = (unsigned)x;
                if (r <= 0) {
                    if (!r)
                        warnf("scenario line %d: util: unknown key '%s'", lineno, k);
                    ok = 0;
                }
            }
            if (ok && !have_pid) {
                warnf("scenario line %d: util needs pid=", lineno);
                ok = 0;
            }
            if (ok)
                PUSH(s->us, s->nus, s->cus, u);
        } else if (!strcmp(kind, "mig")) {
            ok = parse_mig_line(&p, s, lineno);
        } else if (!strcmp(kind, "procname")) {
            pname_t pn = {0, NULL};
            int have_pid = 0;
            while (ok && (w = next_word(&p))) {
                unsigned long long x;
                if (!parse_kv(w, &k, &v)) { ok = 0; break; }
                if (!strcmp(k, "pid") && parse_num(v, &x)) { pn.pid = (unsigned)x; have_pid = 1; }
                else if (!strcmp(k, "name")) pn.name = v;
                else {
                    warnf("scenario line %d: procname pid=N name=...: bad '%s'", lineno, k);
                    ok = 0;
                }
            }
            if (ok && (!have_pid || !pn.name)) {
                warnf("scenario line %d: procname needs pid= and name=", lineno);
                ok = 0;
            }
            if (ok)
                PUSH(s->pn, s->npn, s->cpn, pn);
        } else {
            warnf("scenario line %d: unknown line type '%s' (gpu, proc, util, mig, procname, option)",
                  lineno, kind);
            ok = 0;
        }
    }
    if (ok) {
        s->ngpus = maxgpu + 1;
        for (int i = 0; i < s->ngpus; i++)
            if (!s->present[i]) {
                warnf("scenario: gpu indices must be 0..%d without gaps (%d missing)", maxgpu, i);
                ok = 0;
                break;
            }
    }
    for (int i = 0; ok && i < s->nprocs; i++)
        if (s->procs[i].gpu >= s->ngpus) {
            warnf("scenario: proc on gpu %d, which is not defined", s->procs[i].gpu);
            ok = 0;
        }
    for (int i = 0; ok && i < s->nmigs; i++)
        if (s->migs[i].gpu >= s->ngpus) {
            warnf("scenario: mig on gpu %d, which is not defined", s->migs[i].gpu);
            ok = 0;
        }
    for (int i = 0; ok && i < s->nus; i++)
        if (s->us[i].gpu >= s->ngpus) {
            warnf("scenario: util on gpu %d, which is not defined", s->us[i].gpu);
            ok = 0;
        }
    if (!ok) {
        scen_free(s);
        return -3;
    }
    return 0;
}

static void take_stamp(const struct stat *st)
{
    g_stamp.have = 1;
    g_stamp.dev = st->st_dev;
    g_stamp.ino = st->st_ino;
    g_stamp.size = st->st_size;
    g_stamp.mtim = st->st_mtim;
    g_stamp.ctim = st->st_ctim;
}

static int same_stamp(const struct stat *st)
{
    return g_stamp.have && g_stamp.dev == st->st_dev && g_stamp.ino == st->st_ino &&
           g_stamp.size == st->st_size && g_stamp.mtim.tv_sec == st->st_mtim.tv_sec &&
           g_stamp.mtim.tv_nsec == st->st_mtim.tv_nsec && g_stamp.ctim.tv_sec == st->st_ctim.tv_sec &&
           g_stamp.ctim.tv_nsec == st->st_ctim.tv_nsec;
}

/* FAKE_NVML_RECHECK_MS=N (benchmarks only): look at the scenario file at most
 * every N ms instead of on every call, so the stand-in's own stat() does not
 * dominate what a benchmark of its callers measures.  Default 0: every call. */
static int recheck_not_due(void)
{
    static int recheck_ms = -1;
    static long long next_ns;
    if (recheck_ms < 0) {
        const char *v = getenv("FAKE_NVML_RECHECK_MS");
        recheck_ms = v ? atoi(v) : 0;
    }
    if (recheck_ms <= 0)
        return 0;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (now < next_ns)
        return 1;
    next_ns = now + (long long)recheck_ms * 1000000LL;
    return 0;
}

/* (Re)load the scenario.  force: at init.  Returns 0, or an nvmlReturn_t for
 * init: DRIVER_NOT_LOADED when the file is missing, UNKNOWN when malformed.
 * A failed re-read keeps the previous state (with a warning on stderr). */
static nvmlReturn_t load_scenario(int force)
{
    const char *path = getenv("FAKE_NVML_SCENARIO");
    if (!path || !*path) {
        if (force) {
            scen_free(&S);
            memset(g_extra, 0, sizeof g_extra);
            g_stamp.have = 0;
        }
        return NVML_SUCCESS;
    }
    if (!force && recheck_not_due())
        return NVML_SUCCESS;
    struct stat st;
    if (stat(path, &st) != 0) {
        if (force) {
            warnf("FAKE_NVML_SCENARIO=%s: %s", path, strerror(errno));
            return NVML_ERROR_DRIVER_NOT_LOADED;
        }
        return NVML_SUCCESS;
    }
    if (!force && same_stamp(&st))
        return NVML_SUCCESS;
    scen_t ns;
    int r = parse_scenario(path, &ns);
    if (r != 0) {
        if (r == -1)
            warnf("FAKE_NVML_SCENARIO=%s: %s", path, strerror(errno));
        else
            warnf("FAKE_NVML_SCENARIO=%s: not loaded, %s", path,
                  force ? "nvmlInit fails with UNKNOWN" : "keeping the previous state");
        if (!force)
            take_stamp(&st);             /* don't re-warn until it changes again */
        return r == -1 ? NVML_ERROR_DRIVER_NOT_LOADED : NVML_ERROR_UNKNOWN;
    }
    scen_free(&S);
    S = ns;
    memset(g_extra, 0, sizeof g_extra);
    take_stamp(&st);
    return NVML_SUCCESS;
}

/* ----------------------------------------------------------- values ---- */
static const char *gpu_val(int g, const char *key)
{
    const char *v = kv_find(&S.gpu[g], key);
    if (v)
        return v;
    const keydef_t *d = keydef(GPU_KEYS, N_GPU_KEYS, key);
    if (!d)
        return NULL;
    if (d->def)
        return d->def;
    if (!strcmp(key, "uuid")) {
        snprintf(g_defbuf[g][0], sizeof g_defbuf[g][0], "GPU-6a2e1f0c-3d4b-4e5f-8a9b-%012x", (unsigned)g);
        return g_defbuf[g][0];
    }
    if (!strcmp(key, "pci")) {
        unsigned bus = g < 8 ? DEFAULT_BUS[g] : (unsigned)(g * 0x10) & 0xFF;
        snprintf(g_defbuf[g][1], sizeof g_defbuf[g][1], "00000000:%02X:00.0", bus);
        return g_defbuf[g][1];
    }
    return NULL;                          /* computed numeric default */
}

static const char *opt_val(const char *key)
{
    const char *v = kv_find(&S.opt, key);
    if (v)
        return v;
    const keydef_t *d = keydef(OPT_KEYS, N_OPT_KEYS, key);
    return d ? d->def : NULL;
}

/* Element i of a 'u' value (comma list; past the end -> the last one). */
static nvmlReturn_t u_at(const char *v, unsigned i, unsigned long long *out)
{
    nvmlReturn_t rc;
    if (!v)
        return NVML_ERROR_UNKNOWN;
    if (value_err(v, &rc) == 1)
        return rc;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    unsigned n = 0;
    int found = 0;
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","), n++) {
        if (!parse_num(tok, out))
            return NVML_ERROR_UNKNOWN;
        found = 1;
        if (n == i)
            break;
    }
    return found ? NVML_SUCCESS : NVML_ERROR_UNKNOWN;
}

static nvmlReturn_t gpu_u64_at(int g, const char *key, unsigned i, unsigned long long *out);

static nvmlReturn_t gpu_u64(int g, const char *key, unsigned long long *out)
{
    return gpu_u64_at(g, key, 0, out);
}

static nvmlReturn_t gpu_u64_at(int g, const char *key, unsigned i, unsigned long long *out)
{
    const char *v = gpu_val(g, key);
    if (v)
        return u_at(v, i, out);
    /* computed defaults */
    nvmlReturn_t rc;
    unsigned long long a, b;
    if (!strcmp(key, "mem_v1_used")) {
        if ((rc = gpu_u64(g, "mem_used", &a)) || (rc = gpu_u64(g, "mem_reserved", &b)))
            return rc;
        *out = a + b;
        return NVML_SUCCESS;
    }
    if (!strcmp(key, "mem_v1_free")) {
        if ((rc = gpu_u64(g, "mem_total", &a)) || (rc = gpu_u64(g, "mem_v1_used", &b)))
            return rc;
        *out = a > b ? a - b : 0;
        return NVML_SUCCESS;
    }
    if (!strcmp(key, "cc_unprotected_kib")) {
        if ((rc = gpu_u64(g, "mem_total", &a)))
            return rc;
        *out = a / 1024;
        return NVML_SUCCESS;
    }
    if (!strcmp(key, "grow_after_sizing"))
        return u_at(opt_val("grow_after_sizing"), 0, out);
    if (!strcmp(key, "mig_max_count")) {      /* nvml.h: zero if MIG is not enabled */
        *out = gpu_u64_at(g, "mig_mode", 0, &a) == NVML_SUCCESS && a == 1 ? 7 : 0;
        return NVML_SUCCESS;
    }
    warnf("internal: no value for key %s", key);
    return NVML_ERROR_UNKNOWN;
}

static nvmlReturn_t gpu_u32(int g, const char *key, unsigned *out)
{
    unsigned long long v;
    nvmlReturn_t rc = gpu_u64(g, key, &v);
    if (rc == NVML_SUCCESS)
        *out = (unsigned)v;
    return rc;
}

static nvmlReturn_t gpu_u32_at(int g, const char *key, unsigned i, unsigned *out)
{
    unsigned long long v;
    nvmlReturn_t rc = gpu_u64_at(g, key, i, &v);
    if (rc == NVML_SUCCESS)
        *out = (unsigned)v;
    return rc;
}

/* String value; an err: value returns its code. */
static nvmlReturn_t gpu_str(int g, const char *key, const char **out)
{
    const char *v = gpu_val(g, key);
    nvmlReturn_t rc;
    *out = "";
    if (!v)
        return NVML_ERROR_UNKNOWN;
    if (value_err(v, &rc) == 1)
        return rc;
    *out = v;
    return NVML_SUCCESS;
}

static nvmlReturn_t copy_str(const char *src, char *dst, unsigned length)
{
    if (!dst)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(src) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(dst, src, strlen(src) + 1);
    return NVML_SUCCESS;
}

static int gpu_lost(int g)
{
    unsigned long long v = 0;
    return gpu_u64(g, "lost", &v) == NVML_SUCCESS && v != 0;
}

/* The error of an ok-or-err key of GPU g (handle=err:X, proc_util=err:X), or SUCCESS. */
static nvmlReturn_t gpu_key_rc(int g, const char *key)
{
    const char *v = gpu_val(g, key);
    nvmlReturn_t rc;
    if (v && value_err(v, &rc) == 1)
        return rc;
    return NVML_SUCCESS;
}

static nvmlReturn_t gpu_handle_rc(int g)
{
    return gpu_key_rc(g, "handle");
}

static long long now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

/* -------------------------------------------------------------- log ---- */
typedef struct { char b[1024]; size_t n; } logbuf_t;

static void lg_add(logbuf_t *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void lg_add(logbuf_t *l, const char *fmt, ...)
{
    if (l->n + 2 >= sizeof l->b)
        return;
    l->b[l->n++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    int w = vsnprintf(l->b + l->n, sizeof l->b - l->n, fmt, ap);
    va_end(ap);
    if (w > 0)
        l->n += (size_t)w < sizeof l->b - l->n ? (size_t)w : sizeof l->b - l->n - 1;
}

static void log_call(const char *fn, logbuf_t *l, nvmlReturn_t rc)
{
    const char *path = getenv("FAKE_NVML_LOG");
    if (!path || !*path)
        return;
    char line[1200];
    int n = snprintf(line, sizeof line, "%s%.*s rc=%d\n", fn, (int)l->n, l->b, (int)rc);
    if (n <= 0)
        return;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 1, line[n - 1] = '\n';
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    ssize_t w = write(fd, line, (size_t)n);   /* one write: lines never interleave */
    (void)w;
    close(fd);
}

/* ------------------------------------------------------------ calls ---- */
/* Every exported call: lock, run, log, unlock.  rc is the result. */
#define API_BEGIN(name)                                                    \
    static const char fn_[] = name;                                        \
    logbuf_t lg_ = {{0}, 0};                                               \
    nvmlReturn_t rc = NVML_SUCCESS;                                        \
    int gi = -1;                                                           \
    (void)gi;                                                              \
    pthread_mutex_lock(&g_lock)
#define LOGA(...) lg_add(&lg_, __VA_ARGS__)
#define API_END()                                                          \
    log_call(fn_, &lg_, rc);                                               \
    pthread_mutex_unlock(&g_lock);                                         \
    return rc
#define FAIL(code) do { rc = (code); goto out; } while (0)
#define TRY(expr) do { if ((rc = (expr)) != NVML_SUCCESS) goto out; } while (0)

/* fail.<fn> set on GPU g (g >= 0) or in the options -> its code, else SUCCESS. */
static nvmlReturn_t forced_fail(int g, const char *fn)
{
    char key[160];
    snprintf(key, sizeof key, "fail.%s", fn);
    const char *v = g >= 0 ? kv_find(&S.gpu[g], key) : NULL;
    if (!v)
        v = kv_find(&S.opt, key);
    return v ? (nvmlReturn_t)err_code(v) : NVML_SUCCESS;
}

/* System-level call prologue: initialised?  re-read, forced failure. */
static nvmlReturn_t sys_check(const char *fn)
{
    if (!g_refcount)
        return NVML_ERROR_UNINITIALIZED;
    load_scenario(0);
    return forced_fail(-1, fn);
}

/* Device call prologue: sets *g to the handle's index. */
static nvmlReturn_t dev_check(nvmlDevice_t dev, const char *fn, int *g)
{
    if (!g_refcount)
        return NVML_ERROR_UNINITIALIZED;
    load_scenario(0);
    if (!dev)
        return NVML_ERROR_INVALID_ARGUMENT;
    uintptr_t p = (uintptr_t)dev, base = (uintptr_t)&DEVS[0];
    if (p < base || p >= base + sizeof DEVS || (p - base) % sizeof DEVS[0])
        return NVML_ERROR_INVALID_ARGUMENT;
    *g = (int)((p - base) / sizeof DEVS[0]);
    if (*g >= S.ngpus || gpu_lost(*g))
        return NVML_ERROR_GPU_IS_LOST;   /* gone from the scenario, or lost=1 */
    return forced_fail(*g, fn);
}

#define DEV_BEGIN(name, device)                                            \
    API_BEGIN(name);                                                       \
    rc = dev_check((device), fn_, &gi);                                    \
    LOGA("gpu=%d", gi);                                                    \
    if (rc != NVML_SUCCESS)                                                \
        goto out

#define SYS_BEGIN(name)                                                    \
    API_BEGIN(name);                                                       \
    rc = sys_check(fn_);                                                   \
    if (rc != NVML_SUCCESS)                                                \
        goto out

/* ---------------------------------------------------- init/shutdown ---- */
static nvmlReturn_t do_init(void)
{
    if (g_refcount) {
        load_scenario(0);
        g_refcount++;
        return NVML_SUCCESS;
    }
    nvmlReturn_t rc = load_scenario(1);
    if (rc != NVML_SUCCESS)
        return rc;
    const char *iv = opt_val("init");
    if (iv && value_err(iv, &rc) == 1 && rc != NVML_SUCCESS)
        return rc;
    for (unsigned i = 0; i < MAX_GPUS; i++)
        DEVS[i].idx = i;
    g_refcount = 1;
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlInit_v2(void)
{
    API_BEGIN("nvmlInit_v2");
    rc = do_init();
    LOGA("refcount=%u", g_refcount);
    API_END();
}

nvmlReturn_t DECLDIR nvmlInit(void)
{
    API_BEGIN("nvmlInit");
    rc = do_init();
    LOGA("refcount=%u", g_refcount);
    API_END();
}

nvmlReturn_t DECLDIR nvmlInitWithFlags(unsigned int flags)
{
    API_BEGIN("nvmlInitWithFlags");
    LOGA("flags=%u", flags);
    rc = do_init();
    LOGA("refcount=%u", g_refcount);
    API_END();
}

nvmlReturn_t DECLDIR nvmlShutdown(void)
{
    API_BEGIN("nvmlShutdown");
    if (!g_refcount)
        rc = NVML_ERROR_UNINITIALIZED;
    else
        g_refcount--;
    LOGA("refcount=%u", g_refcount);
    API_END();
}

const DECLDIR char *nvmlErrorString(nvmlReturn_t result)
{
    for (size_t i = 0; i < N_ERRS; i++)
        if (ERRS[i].code == result)
            return ERRS[i].text;
    return "Unknown Error";
}

/* ----------------------------------------------------------- system ---- */
static nvmlReturn_t sys_string(const char *key, char *buf, unsigned length)
{
    const char *v = opt_val(key);
    nvmlReturn_t rc;
    if (value_err(v, &rc) == 1)
        return rc;
    return copy_str(v, buf, length);
}

nvmlReturn_t DECLDIR nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    SYS_BEGIN("nvmlSystemGetDriverVersion");
    LOGA("length=%u", length);
    rc = sys_string("driver_version", version, length);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    SYS_BEGIN("nvmlSystemGetNVMLVersion");
    LOGA("length=%u", length);
    rc = sys_string("nvml_version", version, length);
out:
    API_END();
}

static nvmlReturn_t cuda_version(int *v)
{
    unsigned long long x;
    nvmlReturn_t rc;
    if (!v)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((rc = u_at(opt_val("cuda_version"), 0, &x)) == NVML_SUCCESS)
        *v = (int)x;
    return rc;
}

nvmlReturn_t DECLDIR nvmlSystemGetCudaDriverVersion(int *cudaDriverVersion)
{
    SYS_BEGIN("nvmlSystemGetCudaDriverVersion");
    rc = cuda_version(cudaDriverVersion);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlSystemGetCudaDriverVersion_v2(int *cudaDriverVersion)
{
    SYS_BEGIN("nvmlSystemGetCudaDriverVersion_v2");
    rc = cuda_version(cudaDriverVersion);
out:
    API_END();
}

/* Name: a scenario procname line, else argv[0] from /proc/<pid>/cmdline (the
 * real library gives the process's path), cropped to length. */
nvmlReturn_t DECLDIR nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    SYS_BEGIN("nvmlSystemGetProcessName");
    LOGA("pid=%u length=%u", pid, length);
    if (!name || !length)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    const char *src = NULL;
    for (int i = S.npn - 1; i >= 0 && !src; i--)
        if (S.pn[i].pid == pid)
            src = S.pn[i].name;
    char buf[4096];
    if (!src) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%u/cmdline", pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            FAIL(errno == EACCES ? NVML_ERROR_NO_PERMISSION : NVML_ERROR_NOT_FOUND);
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        if (n <= 0)
            FAIL(NVML_ERROR_NOT_FOUND);
        buf[n] = 0;
        src = buf;
    }
    snprintf(name, length, "%s", src);
out:
    API_END();
}

/* ------------------------------------------------------ enumeration ---- */
nvmlReturn_t DECLDIR nvmlDeviceGetCount_v2(unsigned int *deviceCount)
{
    SYS_BEGIN("nvmlDeviceGetCount_v2");
    if (!deviceCount)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    *deviceCount = (unsigned)S.ngpus;
    LOGA("count=%u", *deviceCount);
out:
    API_END();
}

/* v1: "doesn't count devices that NVML has no permission to talk to". */
static int v1_visible(int g)
{
    return gpu_handle_rc(g) != NVML_ERROR_NO_PERMISSION;
}

nvmlReturn_t DECLDIR nvmlDeviceGetCount(unsigned int *deviceCount)
{
    SYS_BEGIN("nvmlDeviceGetCount");
    if (!deviceCount)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    unsigned n = 0;
    for (int g = 0; g < S.ngpus; g++)
        n += (unsigned)v1_visible(g);
    *deviceCount = n;
    LOGA("count=%u", n);
out:
    API_END();
}

static nvmlReturn_t handle_for(int g, nvmlDevice_t *device, const char *fn)
{
    nvmlReturn_t rc = forced_fail(g, fn);
    if (rc != NVML_SUCCESS)
        return rc;
    if (gpu_lost(g))
        return NVML_ERROR_GPU_IS_LOST;
    if ((rc = gpu_handle_rc(g)) != NVML_SUCCESS)
        return rc;
    *device = &DEVS[g];
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    SYS_BEGIN("nvmlDeviceGetHandleByIndex_v2");
    LOGA("index=%u", index);
    if (!device || index >= (unsigned)S.ngpus)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = handle_for((int)index, device, fn_);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    SYS_BEGIN("nvmlDeviceGetHandleByIndex");
    LOGA("index=%u", index);
    if (!device)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    unsigned k = 0;
    for (int g = 0; g < S.ngpus; g++) {
        if (!v1_visible(g))
            continue;
        if (k++ == index) {
            LOGA("gpu=%d", g);
            rc = handle_for(g, device, fn_);
            goto out;
        }
    }
    rc = NVML_ERROR_INVALID_ARGUMENT;
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    SYS_BEGIN("nvmlDeviceGetHandleByUUID");
    LOGA("uuid=%s", uuid ? uuid : "NULL");
    if (!uuid || !device)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    for (int g = 0; g < S.ngpus; g++) {
        const char *u = NULL;
        if (gpu_str(g, "uuid", &u) == NVML_SUCCESS && !strcmp(u, uuid)) {
            LOGA("gpu=%d", g);
            rc = handle_for(g, device, fn_);
            goto out;
        }
    }
    rc = NVML_ERROR_NOT_FOUND;
out:
    API_END();
}

static nvmlReturn_t by_pci(const char *busId, nvmlDevice_t *device, const char *fn, int v1, logbuf_t *lg)
{
    unsigned d, b, dv;
    if (!busId || !device || !parse_pci(busId, &d, &b, &dv))
        return NVML_ERROR_INVALID_ARGUMENT;
    for (int g = 0; g < S.ngpus; g++) {
        const char *p = gpu_val(g, "pci");
        unsigned d2, b2, dv2;
        if (p && parse_pci(p, &d2, &b2, &dv2) && d == d2 && b == b2 && dv == dv2) {
            lg_add(lg, "gpu=%d", g);
            nvmlReturn_t rc = handle_for(g, device, fn);
            /* "NVML 4.304 and older ... _v1 returns NOT_FOUND instead of NO_PERMISSION" */
            if (v1 && rc == NVML_ERROR_NO_PERMISSION)
                rc = NVML_ERROR_NOT_FOUND;
            return rc;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByPciBusId_v2(const char *pciBusId, nvmlDevice_t *device)
{
    SYS_BEGIN("nvmlDeviceGetHandleByPciBusId_v2");
    LOGA("busId=%s", pciBusId ? pciBusId : "NULL");
    rc = by_pci(pciBusId, device, fn_, 0, &lg_);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device)
{
    SYS_BEGIN("nvmlDeviceGetHandleByPciBusId");
    LOGA("busId=%s", pciBusId ? pciBusId : "NULL");
    rc = by_pci(pciBusId, device, fn_, 1, &lg_);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    DEV_BEGIN("nvmlDeviceGetIndex", device);
    if (!index)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    *index = (unsigned)gi;
out:
    API_END();
}

/* ------------------------------------------------------ MIG handles ---- */
/* A MIG device handle points into MIGS[gpu][index]; it is valid while the
 * scenario has a "mig <gpu> index=<index>" line (a removed instance leaves a
 * stale handle: INVALID_ARGUMENT, as nvml.h says handles "remain invalid"). */
static int is_mig_ptr(nvmlDevice_t dev)
{
    uintptr_t p = (uintptr_t)dev, base = (uintptr_t)&MIGS[0][0];
    return dev && p >= base && p < base + sizeof MIGS && !((p - base) % sizeof MIGS[0][0]);
}

static const mig_t *mig_at(int g, int idx)
{
    for (int i = 0; i < S.nmigs; i++)
        if (S.migs[i].gpu == g && S.migs[i].idx == idx)
            return &S.migs[i];
    return NULL;
}

static nvmlReturn_t mig_check(nvmlDevice_t dev, const char *fn, int *g, const mig_t **m)
{
    if (!g_refcount)
        return NVML_ERROR_UNINITIALIZED;
    load_scenario(0);
    size_t slot = (size_t)((uintptr_t)dev - (uintptr_t)&MIGS[0][0]) / sizeof MIGS[0][0];
    *g = (int)(slot / MAX_MIG);
    if (*g >= S.ngpus || gpu_lost(*g))
        return NVML_ERROR_GPU_IS_LOST;
    *m = mig_at(*g, (int)(slot % MAX_MIG));
    if (!*m)
        return NVML_ERROR_INVALID_ARGUMENT;      /* a stale handle */
    return forced_fail(*g, fn);
}

#define MIG_BEGIN(name, device)                                            \
    API_BEGIN(name);                                                       \
    const mig_t *mig = NULL;                                               \
    rc = mig_check((device), fn_, &gi, &mig);                              \
    LOGA("gpu=%d mig=%d", gi, mig ? mig->idx : -1);                        \
    if (rc != NVML_SUCCESS)                                                \
        goto out

static nvmlReturn_t mig_name(nvmlDevice_t device, char *name, unsigned int length)
{
    MIG_BEGIN("nvmlDeviceGetName", device);
    char buf[160];
    const char *parent;
    if (!name)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    if (mig->name) {
        rc = copy_str(mig->name, name, length);
        goto out;
    }
    TRY(gpu_str(gi, "name", &parent));       /* nvidia-smi's "<GPU name> MIG <profile>" */
    snprintf(buf, sizeof buf, "%s MIG %ug.%llugb", parent, mig->gi_slices,
             (mig->mem_total + (512ULL << 20)) >> 30);
    rc = copy_str(buf, name, length);
out:
    API_END();
}

static nvmlReturn_t mig_uuid(nvmlDevice_t device, char *uuid, unsigned int length)
{
    MIG_BEGIN("nvmlDeviceGetUUID", device);
    char buf[96];
    if (!uuid)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    snprintf(buf, sizeof buf, "MIG-5c1e0a3b-7d2f-4a61-9b8e-%04x%04x%04x", (unsigned)gi, mig->gi, mig->ci);
    rc = copy_str(mig->uuid ? mig->uuid : buf, uuid, length);
out:
    API_END();
}

static nvmlReturn_t mig_memory_v1(nvmlDevice_t device, nvmlMemory_t *v1)
{
    MIG_BEGIN("nvmlDeviceGetMemoryInfo", device);
    v1->total = mig->mem_total;
    v1->used = mig->mem_used;
    v1->free = mig->mem_total > mig->mem_used ? mig->mem_total - mig->mem_used : 0;
out:
    API_END();
}

#ifndef FAKE_NO_MEMORY_INFO_V2
static nvmlReturn_t mig_memory_v2(nvmlDevice_t device, nvmlMemory_v2_t *v2)
{
    MIG_BEGIN("nvmlDeviceGetMemoryInfo_v2", device);
    if (v2->version != nvmlMemory_v2)
        FAIL(v2->version == 2 ? NVML_ERROR_FUNCTION_NOT_FOUND : NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    v2->total = mig->mem_total;
    v2->reserved = 0;
    v2->used = mig->mem_used;
    v2->free = mig->mem_total > mig->mem_used ? mig->mem_total - mig->mem_used : 0;
out:
    API_END();
}
#endif

/* --------------------------------------------------------- identity ---- */
nvmlReturn_t DECLDIR nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    if (is_mig_ptr(device))
        return mig_name(device, name, length);
    DEV_BEGIN("nvmlDeviceGetName", device);
    const char *v;
    LOGA("length=%u", length);
    if (!name)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_str(gi, "name", &v));
    rc = copy_str(v, name, length);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    if (is_mig_ptr(device))
        return mig_uuid(device, uuid, length);
    DEV_BEGIN("nvmlDeviceGetUUID", device);
    const char *v;
    LOGA("length=%u", length);
    if (!uuid)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_str(gi, "uuid", &v));
    rc = copy_str(v, uuid, length);
out:
    API_END();
}

static nvmlReturn_t fill_pci(int g, nvmlPciInfo_t *pci)
{
    const char *v;
    unsigned d, b, dv;
    nvmlReturn_t rc;
    if (!pci)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((rc = gpu_str(g, "pci", &v)) != NVML_SUCCESS)
        return rc;
    if (!parse_pci(v, &d, &b, &dv))
        return NVML_ERROR_UNKNOWN;
    memset(pci, 0, sizeof *pci);
    pci->domain = d;
    pci->bus = b;
    pci->device = dv;
    if ((rc = gpu_u32(g, "pci_device_id", &pci->pciDeviceId)) != NVML_SUCCESS ||
        (rc = gpu_u32(g, "pci_subsystem_id", &pci->pciSubSystemId)) != NVML_SUCCESS)
        return rc;
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, NVML_DEVICE_PCI_BUS_ID_LEGACY_FMT,
             d & 0xFFFF, b & 0xFF, dv & 0xFF);
    snprintf(pci->busId, sizeof pci->busId, NVML_DEVICE_PCI_BUS_ID_FMT, d, b & 0xFF, dv & 0xFF);
    return NVML_SUCCESS;
}

#ifndef FAKE_NO_PCI_INFO_V3
nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEV_BEGIN("nvmlDeviceGetPciInfo_v3", device);
    rc = fill_pci(gi, pci);
out:
    API_END();
}
#endif

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo_v2(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEV_BEGIN("nvmlDeviceGetPciInfo_v2", device);
    rc = fill_pci(gi, pci);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetPciInfo(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEV_BEGIN("nvmlDeviceGetPciInfo", device);
    rc = fill_pci(gi, pci);
out:
    API_END();
}

/* ---------------------------------------------------------- metrics ---- */
/* A call that returns one unsigned int from one key. */
#define U32_GETTER(fname, key)                                             \
    nvmlReturn_t DECLDIR fname(nvmlDevice_t device, unsigned int *value)   \
    {                                                                      \
        DEV_BEGIN(#fname, device);                                         \
        if (!value)                                                        \
            FAIL(NVML_ERROR_INVALID_ARGUMENT);                             \
        rc = gpu_u32(gi, key, value);                                      \
    out:                                                                   \
        API_END();                                                         \
    }

nvmlReturn_t DECLDIR nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *utilization)
{
    unsigned a, b, hang = 0;            /* before DEV_BEGIN: its goto skips past later ones */
    DEV_BEGIN("nvmlDeviceGetUtilizationRates", device);
    if (!utilization)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32(gi, "util_gpu", &a));
    TRY(gpu_u32(gi, "util_mem", &b));
    TRY(gpu_u32(gi, "hang_ms", &hang));
    utilization->gpu = a;
    utilization->memory = b;
out:
    log_call(fn_, &lg_, rc);
    pthread_mutex_unlock(&g_lock);
    if (hang) {                         /* a hung driver call: this GPU's alone */
        struct timespec d = {(time_t)(hang / 1000), (long)(hang % 1000) * 1000000L};
        nanosleep(&d, NULL);
    }
    return rc;
}

static const char *const CLOCK_KEYS[NVML_CLOCK_COUNT] = {"clock_graphics", "clock_sm", "clock_mem", "clock_video"};
static const char *const MAX_CLOCK_KEYS[NVML_CLOCK_COUNT] = {
    "max_clock_graphics", "max_clock_sm", "max_clock_mem", "max_clock_video"};

nvmlReturn_t DECLDIR nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    DEV_BEGIN("nvmlDeviceGetClockInfo", device);
    LOGA("type=%d", (int)type);
    if (!clock || (unsigned)type >= NVML_CLOCK_COUNT)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u32(gi, CLOCK_KEYS[type], clock);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetMaxClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock)
{
    DEV_BEGIN("nvmlDeviceGetMaxClockInfo", device);
    LOGA("type=%d", (int)type);
    if (!clock || (unsigned)type >= NVML_CLOCK_COUNT)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u32(gi, MAX_CLOCK_KEYS[type], clock);
out:
    API_END();
}

static nvmlReturn_t temp_sensor(int g, unsigned sensor, unsigned *t)
{
    if (sensor == NVML_TEMPERATURE_GPU)
        return gpu_u32(g, "temp_gpu", t);
    if (sensor == NVML_TEMPERATURE_GPU_MAX)
        return gpu_u32(g, "temp_gpu_max", t);
    return NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t DECLDIR nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensorType,
                                              unsigned int *temp)
{
    DEV_BEGIN("nvmlDeviceGetTemperature", device);
    LOGA("sensor=%d", (int)sensorType);
    if (!temp)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = temp_sensor(gi, (unsigned)sensorType, temp);
out:
    API_END();
}

#ifndef FAKE_NO_TEMPERATURE_V
nvmlReturn_t DECLDIR nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature)
{
    DEV_BEGIN("nvmlDeviceGetTemperatureV", device);
    unsigned t;
    if (!temperature)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    LOGA("version=0x%08x sensor=%d", temperature->version, (int)temperature->sensorType);
    if (temperature->version != nvmlTemperature_v1)
        FAIL(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    TRY(temp_sensor(gi, (unsigned)temperature->sensorType, &t));
    temperature->temperature = (int)t;
out:
    API_END();
}
#endif

nvmlReturn_t DECLDIR nvmlDeviceGetTemperatureThreshold(nvmlDevice_t device, nvmlTemperatureThresholds_t thresholdType,
                                                       unsigned int *temp)
{
    static const char *const keys[] = {"temp_threshold_shutdown", "temp_threshold_slowdown",
                                       "temp_threshold_mem_max", "temp_threshold_gpu_max"};
    DEV_BEGIN("nvmlDeviceGetTemperatureThreshold", device);
    LOGA("type=%d", (int)thresholdType);
    if (!temp || (unsigned)thresholdType >= NVML_TEMPERATURE_THRESHOLD_COUNT)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    if ((unsigned)thresholdType >= sizeof keys / sizeof keys[0])
        FAIL(NVML_ERROR_NOT_SUPPORTED);   /* acoustic / GPS thresholds */
    rc = gpu_u32(gi, keys[thresholdType], temp);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetFieldValues(nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values)
{
    DEV_BEGIN("nvmlDeviceGetFieldValues", device);
    LOGA("count=%d", valuesCount);
    if (!values || valuesCount < 0)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    long long ts = now_us();
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *fv = &values[i];
        unsigned long long v = 0;
        unsigned u = 0;
        LOGA("field=%u", fv->fieldId);
        fv->timestamp = ts;
        fv->latencyUsec = 0;
        memset(&fv->value, 0, sizeof fv->value);
        switch (fv->fieldId) {
        case NVML_FI_DEV_MEMORY_TEMP:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            fv->nvmlReturn = gpu_u32(gi, "temp_mem", &u);
            fv->value.uiVal = u;
            break;
        case NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
            fv->nvmlReturn = gpu_u64(gi, "energy_mj", &v);
            fv->value.ullVal = v;
            break;
        case NVML_FI_DEV_GPU_TEMP:
            fv->valueType = NVML_VALUE_TYPE_DOUBLE;
            fv->nvmlReturn = gpu_u32(gi, "temp_gpu", &u);
            fv->value.dVal = (double)u;
            break;
        default:
            fv->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            fv->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
            break;
        }
        if (fv->nvmlReturn != NVML_SUCCESS)
            memset(&fv->value, 0, sizeof fv->value);
    }
out:
    API_END();
}

U32_GETTER(nvmlDeviceGetPowerUsage, "power_usage_mw")
U32_GETTER(nvmlDeviceGetEnforcedPowerLimit, "power_limit_mw")
U32_GETTER(nvmlDeviceGetPowerManagementLimit, "power_mgmt_limit_mw")
U32_GETTER(nvmlDeviceGetPowerManagementDefaultLimit, "power_default_limit_mw")
U32_GETTER(nvmlDeviceGetCurrPcieLinkGeneration, "pcie_gen")
U32_GETTER(nvmlDeviceGetCurrPcieLinkWidth, "pcie_width")
U32_GETTER(nvmlDeviceGetMaxPcieLinkGeneration, "pcie_max_gen")
U32_GETTER(nvmlDeviceGetMaxPcieLinkWidth, "pcie_max_width")

/* Fan calls.  NumFans gates the per-fan calls: its error is theirs. */
static nvmlReturn_t fan_index_ok(int g, unsigned fan)
{
    unsigned n;
    nvmlReturn_t rc = gpu_u32(g, "num_fans", &n);
    if (rc != NVML_SUCCESS)
        return rc;
    return fan < n ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t DECLDIR nvmlDeviceGetFanSpeed(nvmlDevice_t device, unsigned int *speed)
{
    DEV_BEGIN("nvmlDeviceGetFanSpeed", device);
    if (!speed)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u32_at(gi, "fan_speed", 0, speed);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed)
{
    DEV_BEGIN("nvmlDeviceGetFanSpeed_v2", device);
    LOGA("fan=%u", fan);
    if (!speed)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32_at(gi, "fan_speed", fan, speed));   /* NOT_SUPPORTED first: no fan */
    rc = fan_index_ok(gi, fan);
out:
    API_END();
}

#ifndef FAKE_NO_NUM_FANS
nvmlReturn_t DECLDIR nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *numFans)
{
    DEV_BEGIN("nvmlDeviceGetNumFans", device);
    if (!numFans)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u32(gi, "num_fans", numFans);
out:
    API_END();
}
#endif

#ifndef FAKE_NO_FAN_SPEED_RPM
nvmlReturn_t DECLDIR nvmlDeviceGetFanSpeedRPM(nvmlDevice_t device, nvmlFanSpeedInfo_t *fanSpeed)
{
    DEV_BEGIN("nvmlDeviceGetFanSpeedRPM", device);
    unsigned v;
    if (!fanSpeed)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    LOGA("version=0x%08x fan=%u", fanSpeed->version, fanSpeed->fan);
    if (fanSpeed->version != nvmlFanSpeedInfo_v1)
        FAIL(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    TRY(gpu_u32_at(gi, "fan_rpm", fanSpeed->fan, &v));
    TRY(fan_index_ok(gi, fanSpeed->fan));
    fanSpeed->speed = v;
out:
    API_END();
}
#endif

nvmlReturn_t DECLDIR nvmlDeviceGetPowerManagementLimitConstraints(nvmlDevice_t device, unsigned int *minLimit,
                                                                  unsigned int *maxLimit)
{
    DEV_BEGIN("nvmlDeviceGetPowerManagementLimitConstraints", device);
    unsigned a, b;
    if (!minLimit || !maxLimit)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32(gi, "power_min_limit_mw", &a));
    TRY(gpu_u32(gi, "power_max_limit_mw", &b));
    *minLimit = a;
    *maxLimit = b;
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy)
{
    DEV_BEGIN("nvmlDeviceGetTotalEnergyConsumption", device);
    if (!energy)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u64(gi, "energy_mj", energy);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    if (is_mig_ptr(device))
        return memory ? mig_memory_v1(device, memory) : NVML_ERROR_INVALID_ARGUMENT;
    DEV_BEGIN("nvmlDeviceGetMemoryInfo", device);
    unsigned long long t, u, f;
    if (!memory)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u64(gi, "mem_total", &t));
    TRY(gpu_u64(gi, "mem_v1_used", &u));
    TRY(gpu_u64(gi, "mem_v1_free", &f));
    memory->total = t;
    memory->used = u;
    memory->free = f;
out:
    API_END();
}

#ifndef FAKE_NO_MEMORY_INFO_V2
/* version must be nvmlMemory_v2 (0x02000028).  A bare 2 (nvtop's mistake)
 * fails with FUNCTION_NOT_FOUND as on the real library (nvidia-settings#78);
 * any other version gets mem_v2_bad_version (ARGUMENT_VERSION_MISMATCH). */
nvmlReturn_t DECLDIR nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    if (is_mig_ptr(device))
        return memory ? mig_memory_v2(device, memory) : NVML_ERROR_INVALID_ARGUMENT;
    DEV_BEGIN("nvmlDeviceGetMemoryInfo_v2", device);
    unsigned long long t, r, u, x;
    if (!memory)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    LOGA("version=0x%08x", memory->version);
    if (memory->version == 2)
        FAIL(NVML_ERROR_FUNCTION_NOT_FOUND);
    if (memory->version != nvmlMemory_v2) {
        rc = gpu_u64(gi, "mem_v2_bad_version", &x);
        if (rc == NVML_SUCCESS)
            rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        goto out;
    }
    TRY(gpu_u64(gi, "mem_total", &t));
    TRY(gpu_u64(gi, "mem_reserved", &r));
    TRY(gpu_u64(gi, "mem_used", &u));
    memory->total = t;
    memory->reserved = r;
    memory->used = u;
    memory->free = t > r + u ? t - r - u : 0;
out:
    API_END();
}
#endif

nvmlReturn_t DECLDIR nvmlDeviceGetPcieThroughput(nvmlDevice_t device, nvmlPcieUtilCounter_t counter,
                                                 unsigned int *value)
{
    DEV_BEGIN("nvmlDeviceGetPcieThroughput", device);
    unsigned long long delay = 0;
    LOGA("counter=%d", (int)counter);
    if (!value || (unsigned)counter >= NVML_PCIE_UTIL_COUNT)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32(gi, counter == NVML_PCIE_UTIL_TX_BYTES ? "pcie_tx_kbs" : "pcie_rx_kbs", value));
    if (u_at(opt_val("pcie_throughput_delay_ms"), 0, &delay) == NVML_SUCCESS && delay) {
        struct timespec d = {(time_t)(delay / 1000), (long)(delay % 1000) * 1000000L};
        nanosleep(&d, NULL);            /* the real call samples for 20 ms */
    }
out:
    API_END();
}

static nvmlReturn_t pstate(int g, nvmlPstates_t *p)
{
    unsigned v;
    nvmlReturn_t rc;
    if (!p)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((rc = gpu_u32(g, "pstate", &v)) == NVML_SUCCESS)
        *p = (nvmlPstates_t)v;
    return rc;
}

nvmlReturn_t DECLDIR nvmlDeviceGetPerformanceState(nvmlDevice_t device, nvmlPstates_t *pState)
{
    DEV_BEGIN("nvmlDeviceGetPerformanceState", device);
    rc = pstate(gi, pState);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerState(nvmlDevice_t device, nvmlPstates_t *pState)
{
    DEV_BEGIN("nvmlDeviceGetPowerState", device);
    rc = pstate(gi, pState);
out:
    API_END();
}

#define U64_GETTER(fname, key)                                                   \
    nvmlReturn_t DECLDIR fname(nvmlDevice_t device, unsigned long long *value)   \
    {                                                                            \
        DEV_BEGIN(#fname, device);                                               \
        if (!value)                                                              \
            FAIL(NVML_ERROR_INVALID_ARGUMENT);                                   \
        rc = gpu_u64(gi, key, value);                                            \
    out:                                                                         \
        API_END();                                                               \
    }

#ifndef FAKE_NO_CLOCKS_EVENT_REASONS
U64_GETTER(nvmlDeviceGetCurrentClocksEventReasons, "clocks_event_reasons")
U64_GETTER(nvmlDeviceGetSupportedClocksEventReasons, "supported_clocks_event_reasons")
#endif
U64_GETTER(nvmlDeviceGetCurrentClocksThrottleReasons, "clocks_event_reasons")
U64_GETTER(nvmlDeviceGetSupportedClocksThrottleReasons, "supported_clocks_event_reasons")

static nvmlReturn_t engine_util(int g, const char *k1, const char *k2, unsigned *util, unsigned *period)
{
    unsigned a, b;
    nvmlReturn_t rc;
    if (!util || !period)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((rc = gpu_u32(g, k1, &a)) != NVML_SUCCESS || (rc = gpu_u32(g, k2, &b)) != NVML_SUCCESS)
        return rc;
    *util = a;
    *period = b;
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                                     unsigned int *samplingPeriodUs)
{
    DEV_BEGIN("nvmlDeviceGetEncoderUtilization", device);
    rc = engine_util(gi, "enc_util", "enc_period_us", utilization, samplingPeriodUs);
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                                     unsigned int *samplingPeriodUs)
{
    DEV_BEGIN("nvmlDeviceGetDecoderUtilization", device);
    rc = engine_util(gi, "dec_util", "dec_period_us", utilization, samplingPeriodUs);
out:
    API_END();
}

#ifndef FAKE_NO_JPG_UTILIZATION
nvmlReturn_t DECLDIR nvmlDeviceGetJpgUtilization(nvmlDevice_t device, unsigned int *utilization,
                                                 unsigned int *samplingPeriodUs)
{
    DEV_BEGIN("nvmlDeviceGetJpgUtilization", device);
    rc = engine_util(gi, "jpg_util", "jpg_period_us", utilization, samplingPeriodUs);
out:
    API_END();
}
#endif

nvmlReturn_t DECLDIR nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode)
{
    DEV_BEGIN("nvmlDeviceGetMigMode", device);
    unsigned a, b;
    if (!currentMode || !pendingMode)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32_at(gi, "mig_mode", 0, &a));
    TRY(gpu_u32_at(gi, "mig_mode", 1, &b));
    *currentMode = a;
    *pendingMode = b;
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    DEV_BEGIN("nvmlDeviceGetMaxMigDeviceCount", device);
    if (!count)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    rc = gpu_u32(gi, "mig_max_count", count);
out:
    API_END();
}

/* NOT_FOUND for an index without an instance (the indices are sparse);
 * NOT_SUPPORTED while MIG is off (mig_mode current != 1). */
nvmlReturn_t DECLDIR nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                         nvmlDevice_t *migDevice)
{
    DEV_BEGIN("nvmlDeviceGetMigDeviceHandleByIndex", device);
    unsigned mode = 0, max = 0;
    LOGA("index=%u", index);
    if (!migDevice)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    if (gpu_u32_at(gi, "mig_mode", 0, &mode) != NVML_SUCCESS || mode != 1)
        FAIL(NVML_ERROR_NOT_SUPPORTED);
    TRY(gpu_u32(gi, "mig_max_count", &max));
    if (index >= max || index >= MAX_MIG)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    if (!mig_at(gi, (int)index))
        FAIL(NVML_ERROR_NOT_FOUND);
    *migDevice = &MIGS[gi][index];
out:
    API_END();
}

static nvmlReturn_t mig_is_mig(nvmlDevice_t device, unsigned int *isMigDevice)
{
    MIG_BEGIN("nvmlDeviceIsMigDeviceHandle", device);
    if (!isMigDevice)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    *isMigDevice = 1;
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *isMigDevice)
{
    if (is_mig_ptr(device))
        return mig_is_mig(device, isMigDevice);
    DEV_BEGIN("nvmlDeviceIsMigDeviceHandle", device);
    if (!isMigDevice)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    *isMigDevice = 0;
out:
    API_END();
}

nvmlReturn_t DECLDIR nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t migDevice, nvmlDevice_t *device)
{
    if (!is_mig_ptr(migDevice))
        return g_refcount ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED;
    MIG_BEGIN("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice);
    if (!device)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    *device = &DEVS[gi];
out:
    API_END();
}

/* GI/CI ids and attributes take MIG handles only: a GPU handle is INVALID_ARGUMENT. */
#define MIG_U32(fname, expr)                                                   \
    nvmlReturn_t DECLDIR fname(nvmlDevice_t device, unsigned int *id)          \
    {                                                                          \
        if (!is_mig_ptr(device))                                               \
            return g_refcount ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_UNINITIALIZED; \
        MIG_BEGIN(#fname, device);                                             \
        if (!id)                                                               \
            FAIL(NVML_ERROR_INVALID_ARGUMENT);                                 \
        *id = (expr);                                                          \
    out:                                                                       \
        API_END();                                                             \
    }
MIG_U32(nvmlDeviceGetGpuInstanceId, mig->gi)
MIG_U32(nvmlDeviceGetComputeInstanceId, mig->ci)

nvmlReturn_t DECLDIR nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes)
{
    if (!is_mig_ptr(device))    /* nvml.h: "currently only supports MIG device handles" */
        return g_refcount ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_UNINITIALIZED;
    MIG_BEGIN("nvmlDeviceGetAttributes_v2", device);
    if (!attributes)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    memset(attributes, 0, sizeof *attributes);
    attributes->multiprocessorCount = mig->sm_count;
    attributes->sharedCopyEngineCount = mig->gi_slices;
    attributes->gpuInstanceSliceCount = mig->gi_slices;
    attributes->computeInstanceSliceCount = mig->ci_slices;
    attributes->memorySizeMB = mig->mem_total >> 20;
out:
    API_END();
}

/* --------------------------------------------------------------- ECC ---- */
nvmlReturn_t DECLDIR nvmlDeviceGetEccMode(nvmlDevice_t device, nvmlEnableState_t *current, nvmlEnableState_t *pending)
{
    DEV_BEGIN("nvmlDeviceGetEccMode", device);
    unsigned a, b;
    if (!current || !pending)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32_at(gi, "ecc_mode", 0, &a));
    TRY(gpu_u32_at(gi, "ecc_mode", 1, &b));
    *current = a ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    *pending = b ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
out:
    API_END();
}

/* The ecc_<corrected|uncorrected>_<volatile|aggregate> key; NOT_SUPPORTED
 * (or ecc_mode's error) while ECC is off ("Requires ECC Mode to be enabled"). */
nvmlReturn_t DECLDIR nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t errorType,
                                                 nvmlEccCounterType_t counterType, unsigned long long *eccCounts)
{
    DEV_BEGIN("nvmlDeviceGetTotalEccErrors", device);
    unsigned mode;
    char key[64];
    LOGA("type=%d counter=%d", (int)errorType, (int)counterType);
    if (!eccCounts || (unsigned)errorType > 1 || (unsigned)counterType > 1)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u32_at(gi, "ecc_mode", 0, &mode));
    if (!mode)
        FAIL(NVML_ERROR_NOT_SUPPORTED);
    snprintf(key, sizeof key, "ecc_%s_%s", errorType ? "uncorrected" : "corrected",
             counterType ? "aggregate" : "volatile");
    rc = gpu_u64(gi, key, eccCounts);
out:
    API_END();
}

#ifndef FAKE_NO_CONF_COMPUTE
nvmlReturn_t DECLDIR nvmlDeviceGetConfComputeMemSizeInfo(nvmlDevice_t device, nvmlConfComputeMemSizeInfo_t *memInfo)
{
    DEV_BEGIN("nvmlDeviceGetConfComputeMemSizeInfo", device);
    unsigned long long a, b;
    if (!memInfo)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_u64(gi, "cc_protected_kib", &a));
    TRY(gpu_u64(gi, "cc_unprotected_kib", &b));
    memInfo->protectedMemSizeKib = a;
    memInfo->unprotectedMemSizeKib = b;
out:
    API_END();
}
#endif

/* -------------------------------------------------------- processes ---- */
static int grows_list(int g, int list)
{
    const char *v = gpu_val(g, "grow_lists");
    char buf[128];
    snprintf(buf, sizeof buf, "%s", v ? v : "");
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ","))
        if (!strcmp(tok, LIST_NAMES[list]))
            return 1;
    return 0;
}

/* The entries of the lists in mask (bit per list) on GPU g: scenario procs,
 * then the grow_after_sizing additions; with several lists, one per pid.
 * Returns the count; *out is malloc'd (free it). */
static unsigned collect(int g, unsigned mask, proc_t **out)
{
    unsigned n = 0, cap = 0;
    proc_t *a = NULL;
    for (int list = 0; list < N_LISTS; list++) {
        if (!(mask & (1u << list)))
            continue;
        for (int i = 0; i < S.nprocs; i++) {
            const proc_t *p = &S.procs[i];
            if (p->gpu != g || p->list != list)
                continue;
            int dup = 0;
            for (unsigned j = 0; j < n && !dup; j++)
                dup = a[j].pid == p->pid && a[j].list != list;
            if (!dup)
                PUSH(a, n, cap, *p);
        }
        for (unsigned k = 0; k < g_extra[g][list]; k++) {
            proc_t p = {g, list, 3000000u + (unsigned)(g * N_LISTS + list) * 100000u + k,
                        0xFFFFFFFFu, 0xFFFFFFFFu, (unsigned long long)(k + 1) * 1048576ULL, 0};
            PUSH(a, n, cap, p);
        }
    }
    *out = a;
    return n;
}

static void after_sizing(int g, int list)
{
    unsigned long long grow = 0;
    if (gpu_u64(g, "grow_after_sizing", &grow) == NVML_SUCCESS && grow && grows_list(g, list)) {
        unsigned long long n = g_extra[g][list] + grow;
        g_extra[g][list] = (unsigned)(n > 100000 ? 100000 : n);
    }
}

/* layout: 16 (nvmlProcessInfo_v1_t), 24 (nvmlProcessInfo_t), 32 (nvmlProcessDetail_v1_t) */
static void put_entry(void *infos, unsigned i, unsigned layout, const proc_t *p)
{
    if (layout == 16) {
        nvmlProcessInfo_v1_t *e = (nvmlProcessInfo_v1_t *)infos + i;
        memset(e, 0, sizeof *e);
        e->pid = p->pid;
        e->usedGpuMemory = p->mem;
    } else if (layout == 24) {
        nvmlProcessInfo_t *e = (nvmlProcessInfo_t *)infos + i;
        memset(e, 0, sizeof *e);
        e->pid = p->pid;
        e->usedGpuMemory = p->mem;
        e->gpuInstanceId = p->gi;
        e->computeInstanceId = p->ci;
    } else {
        nvmlProcessDetail_v1_t *e = (nvmlProcessDetail_v1_t *)infos + i;
        memset(e, 0, sizeof *e);
        e->pid = p->pid;
        e->usedGpuMemory = p->mem;
        e->gpuInstanceId = p->gi;
        e->computeInstanceId = p->ci;
        e->usedGpuCcProtectedMemory = p->cc;
    }
}

/* The infoCount handshake of nvml.h: *infoCount = 0 (infos may be NULL) ->
 * INSUFFICIENT_SIZE with the count, or SUCCESS and 0 when none; too small
 * -> INSUFFICIENT_SIZE with the needed count; else fill and set the count. */
static nvmlReturn_t list_call(int g, unsigned mask, int grow_list, unsigned *infoCount, void *infos,
                              unsigned layout, logbuf_t *lg)
{
    if (!infoCount)
        return NVML_ERROR_INVALID_ARGUMENT;
    proc_t *a;
    unsigned n = collect(g, mask, &a), cap = *infoCount;
    nvmlReturn_t rc = NVML_SUCCESS;
    lg_add(lg, "in=%u infos=%s", cap, infos ? "buf" : "NULL");
    if (n == 0) {
        *infoCount = 0;
    } else if (cap < n) {
        *infoCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else if (!infos) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        for (unsigned i = 0; i < n; i++)
            put_entry(infos, i, layout, &a[i]);
        *infoCount = n;
    }
    lg_add(lg, "out=%u", *infoCount);
    free(a);
    if (grow_list >= 0 && (cap == 0 || !infos || rc == NVML_ERROR_INSUFFICIENT_SIZE))
        after_sizing(g, grow_list);
    return rc;
}

#ifdef FAKE_EARLY_R535
#  define V3_LAYOUT 32u
#else
#  define V3_LAYOUT 24u
#endif

#define PROC_CALL(fname, list, ctype, layout)                                              \
    nvmlReturn_t DECLDIR fname(nvmlDevice_t device, unsigned int *infoCount, ctype *infos) \
    {                                                                                      \
        DEV_BEGIN(#fname, device);                                                         \
        rc = list_call(gi, 1u << (list), (list), infoCount, infos, (layout), &lg_);        \
    out:                                                                                   \
        API_END();                                                                         \
    }

PROC_CALL(nvmlDeviceGetComputeRunningProcesses, L_COMPUTE, nvmlProcessInfo_v1_t, 16u)
PROC_CALL(nvmlDeviceGetGraphicsRunningProcesses, L_GRAPHICS, nvmlProcessInfo_v1_t, 16u)
PROC_CALL(nvmlDeviceGetMPSComputeRunningProcesses, L_MPS, nvmlProcessInfo_v1_t, 16u)
#ifndef FAKE_NO_PROCS_V2
PROC_CALL(nvmlDeviceGetComputeRunningProcesses_v2, L_COMPUTE, nvmlProcessInfo_v2_t, 24u)
PROC_CALL(nvmlDeviceGetGraphicsRunningProcesses_v2, L_GRAPHICS, nvmlProcessInfo_v2_t, 24u)
PROC_CALL(nvmlDeviceGetMPSComputeRunningProcesses_v2, L_MPS, nvmlProcessInfo_v2_t, 24u)
#endif
#ifndef FAKE_NO_PROCS_V3
PROC_CALL(nvmlDeviceGetComputeRunningProcesses_v3, L_COMPUTE, nvmlProcessInfo_t, V3_LAYOUT)
PROC_CALL(nvmlDeviceGetGraphicsRunningProcesses_v3, L_GRAPHICS, nvmlProcessInfo_t, V3_LAYOUT)
PROC_CALL(nvmlDeviceGetMPSComputeRunningProcesses_v3, L_MPS, nvmlProcessInfo_t, V3_LAYOUT)
#endif

#ifndef FAKE_NO_PROCESS_DETAIL_LIST
nvmlReturn_t DECLDIR nvmlDeviceGetRunningProcessDetailList(nvmlDevice_t device, nvmlProcessDetailList_t *plist)
{
    DEV_BEGIN("nvmlDeviceGetRunningProcessDetailList", device);
    if (!plist)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    LOGA("version=0x%08x mode=%u", plist->version, plist->mode);
    if (plist->version != nvmlProcessDetailList_v1)
        FAIL(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    if (plist->mode > NVML_PROCESS_MODE_ALL)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    unsigned mask = plist->mode == NVML_PROCESS_MODE_ALL ? 7u : 1u << plist->mode;
    int grow = plist->mode == NVML_PROCESS_MODE_ALL ? -1 : (int)plist->mode;
    rc = list_call(gi, mask, grow, &plist->numProcArrayEntries, plist->procArray, 32u, &lg_);
out:
    API_END();
}
#endif

/* Samples of GPU g with timeStamp > lastSeen, in scenario order. */
static unsigned util_samples(int g, unsigned long long lastSeen, usamp_t **out, long long **ts_out)
{
    unsigned n = 0, cap = 0, tcap = 0, tn = 0;
    usamp_t *a = NULL;
    long long *ts = NULL, now = now_us();
    for (int i = 0; i < S.nus; i++) {
        const usamp_t *u = &S.us[i];
        if (u->gpu != g)
            continue;
        long long t = u->ts_now ? now + u->ts : u->ts;
        if (t < 0 || (unsigned long long)t <= lastSeen)
            continue;
        PUSH(a, n, cap, *u);
        PUSH(ts, tn, tcap, t);
    }
    *out = a;
    *ts_out = ts;
    return n;
}

nvmlReturn_t DECLDIR nvmlDeviceGetProcessUtilization(nvmlDevice_t device, nvmlProcessUtilizationSample_t *utilization,
                                                     unsigned int *processSamplesCount,
                                                     unsigned long long lastSeenTimeStamp)
{
    DEV_BEGIN("nvmlDeviceGetProcessUtilization", device);
    LOGA("lastSeen=%llu buf=%s in=%u", lastSeenTimeStamp, utilization ? "buf" : "NULL",
         processSamplesCount ? *processSamplesCount : 0);
    if (!processSamplesCount)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    TRY(gpu_key_rc(gi, "proc_util"));
    usamp_t *a;
    long long *ts;
    unsigned n = util_samples(gi, lastSeenTimeStamp, &a, &ts);
    if (n == 0) {
        *processSamplesCount = 0;
        rc = NVML_ERROR_NOT_FOUND;
    } else if (!utilization || *processSamplesCount < n) {
        *processSamplesCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else {
        for (unsigned i = 0; i < n; i++) {
            nvmlProcessUtilizationSample_t *s = &utilization[i];
            memset(s, 0, sizeof *s);
            s->pid = a[i].pid;
            s->timeStamp = (unsigned long long)ts[i];
            s->smUtil = a[i].sm;
            s->memUtil = a[i].mem;
            s->encUtil = a[i].enc;
            s->decUtil = a[i].dec;
        }
        *processSamplesCount = n;
    }
    LOGA("out=%u", *processSamplesCount);
    free(a);
    free(ts);
out:
    API_END();
}

#ifndef FAKE_NO_PROCESSES_UTILIZATION_INFO
nvmlReturn_t DECLDIR nvmlDeviceGetProcessesUtilizationInfo(nvmlDevice_t device,
                                                           nvmlProcessesUtilizationInfo_t *procesesUtilInfo)
{
    DEV_BEGIN("nvmlDeviceGetProcessesUtilizationInfo", device);
    nvmlProcessesUtilizationInfo_t *pu = procesesUtilInfo;
    if (!pu)
        FAIL(NVML_ERROR_INVALID_ARGUMENT);
    LOGA("version=0x%08x lastSeen=%llu buf=%s in=%u", pu->version, pu->lastSeenTimeStamp,
         pu->procUtilArray ? "buf" : "NULL", pu->processSamplesCount);
    if (pu->version != nvmlProcessesUtilizationInfo_v1)
        FAIL(NVML_ERROR_ARGUMENT_VERSION_MISMATCH);
    TRY(gpu_key_rc(gi, "proc_util"));
    usamp_t *a;
    long long *ts;
    unsigned n = util_samples(gi, pu->lastSeenTimeStamp, &a, &ts);
    if (n == 0) {
        pu->processSamplesCount = 0;
        rc = NVML_ERROR_NOT_FOUND;
    } else if (!pu->procUtilArray || pu->processSamplesCount < n) {
        pu->processSamplesCount = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else {
        for (unsigned i = 0; i < n; i++) {
            nvmlProcessUtilizationInfo_v1_t *s = &pu->procUtilArray[i];
            memset(s, 0, sizeof *s);
            s->timeStamp = (unsigned long long)ts[i];
            s->pid = a[i].pid;
            s->smUtil = a[i].sm;
            s->memUtil = a[i].mem;
            s->encUtil = a[i].enc;
            s->decUtil = a[i].dec;
            s->jpgUtil = a[i].jpg;
            s->ofaUtil = a[i].ofa;
        }
        pu->processSamplesCount = n;
    }
    LOGA("out=%u", pu->processSamplesCount);
    free(a);
    free(ts);
out:
    API_END();
}
#endif
