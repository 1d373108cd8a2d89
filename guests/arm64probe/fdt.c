/* fdt.c: a bounds-checked reader of the flattened device tree the loader
 * passes in x0. It takes what the probe needs (memory, CPUs, PSCI, GIC,
 * timer, the PL011 of stdout-path, /chosen) and fails with a reason, never
 * reading outside the blob's header-declared size, which must be at
 * most maxsize (2 MiB in the guest: the boot protocol's limit). */
#include "probe.h"

#define FDT_MAGIC 0xd00dfeed
#define FDT_BEGIN_NODE 1
#define FDT_END_NODE 2
#define FDT_PROP 3
#define FDT_NOP 4
#define FDT_END 9
#define FDT_MAX_SIZE (2u << 20) /* the boot protocol's limit */
#define MAX_DEPTH 16
#define MAX_UARTS 4

static uint32_t be32(const uint8_t *p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

struct prop {
	const uint8_t *v;
	uint32_t len;
	int set;
};

struct node {
	char name[64];
	uint32_t addr_cells, size_cells; /* for the children */
	struct prop compat, reg, dtype, method, enable, intr, bootargs, stdout, clockf, model, nredist;
	int is_its;
};

/* str: a property as a C string if it is one (NUL-terminated within len). */
static const char *str(const struct prop *p)
{
	if (!p->set || p->len == 0 || p->v[p->len - 1] != 0)
		return 0;
	return (const char *)p->v;
}

static void copy_str(char *dst, size_t n, const struct prop *p)
{
	const char *s = str(p);
	size_t i = 0;
	if (s)
		for (; s[i] && i + 1 < n; i++)
			dst[i] = s[i];
	dst[i] = 0;
}

/* compat_has: whether the stringlist holds want (exactly, or as a prefix
 * when prefix is set). */
static int compat_has(const struct prop *p, const char *want, int prefix)
{
	if (!str(p))
		return 0;
	size_t wl = strlen(want);
	for (uint32_t i = 0; i < p->len;) {
		const char *s = (const char *)p->v + i;
		size_t l = strlen(s); /* ends within len: the last byte is NUL */
		if (prefix ? strncmp(s, want, wl) == 0 : strcmp(s, want) == 0)
			return 1;
		i += l + 1;
	}
	return 0;
}

/* cells: reads n (1 or 2) big-endian cells at *off of p; 0 on overrun. */
static int cells(const struct prop *p, uint32_t *off, uint32_t n, uint64_t *out)
{
	if (n > 2 || *off + 4 * n > p->len)
		return 0;
	uint64_t v = 0;
	for (uint32_t i = 0; i < n; i++)
		v = v << 32 | be32(p->v + *off + 4 * i);
	*off += 4 * n;
	*out = v;
	return 1;
}

/* reg_at: the i-th (address, size) pair of a reg property. */
static int reg_at(const struct prop *p, const struct node *parent, int i, uint64_t *a, uint64_t *s)
{
	uint32_t ac = parent->addr_cells, sc = parent->size_cells;
	if (!p->set || ac < 1 || ac > 2 || sc > 2)
		return 0;
	uint32_t off = (uint32_t)i * 4 * (ac + sc);
	if (off / 4 / (ac + sc) != (uint32_t)i)
		return 0;
	*s = 0;
	return cells(p, &off, ac, a) && (sc == 0 || cells(p, &off, sc, s));
}

static void finish_node(struct fdt_info *fi, struct node *n, struct node *parent, int depth, const char *path,
			uint64_t *uarts, uint32_t *uart_spis, char uart_paths[][128], int *nuarts)
{
	if (depth == 0) {
		copy_str(fi->model, sizeof(fi->model), &n->model);
		return;
	}
	if (depth == 1 && strcmp(n->name, "chosen") == 0) {
		if (str(&n->bootargs))
			fi->bootargs = str(&n->bootargs);
		copy_str(fi->stdout_path, sizeof(fi->stdout_path), &n->stdout);
	}
	const char *dt = str(&n->dtype);
	if (dt && strcmp(dt, "memory") == 0) {
		uint64_t a, s;
		for (int i = 0; fi->nmem < MAX_MEM && reg_at(&n->reg, parent, i, &a, &s); i++)
			if (s) {
				fi->mem_base[fi->nmem] = a;
				fi->mem_size[fi->nmem++] = s;
			}
	}
	if (dt && strcmp(dt, "cpu") == 0 && depth == 2 && strcmp(parent->name, "cpus") == 0 && fi->ncpus < MAX_CPUS) {
		uint64_t a, s;
		if (reg_at(&n->reg, parent, 0, &a, &s)) {
			fi->cpu_reg[fi->ncpus] = a;
			copy_str(fi->cpu_enable[fi->ncpus], sizeof(fi->cpu_enable[0]), &n->enable);
			fi->ncpus++;
		}
	}
	if (compat_has(&n->compat, "arm,psci", 1) && !fi->psci_found) {
		fi->psci_found = 1;
		size_t o = 0;
		for (uint32_t i = 0; str(&n->compat) && i < n->compat.len; ) {
			const char *s = (const char *)n->compat.v + i;
			size_t l = strlen(s);
			o += snprintf(fi->psci_compat + o, o < sizeof(fi->psci_compat) ? sizeof(fi->psci_compat) - o : 0, "%s%s", o ? "," : "", s);
			if (o >= sizeof(fi->psci_compat))
				break;
			i += l + 1;
		}
		copy_str(fi->psci_method, sizeof(fi->psci_method), &n->method);
	}
	if (compat_has(&n->compat, "arm,gic-v3", 0) || compat_has(&n->compat, "arm,gic-400", 0) ||
	    compat_has(&n->compat, "arm,cortex-a15-gic", 0)) {
		copy_str(fi->gic_compat, sizeof(fi->gic_compat), &n->compat);
		reg_at(&n->reg, parent, 0, &fi->gicd_base, &fi->gicd_size);
		reg_at(&n->reg, parent, 1, &fi->gicr_base, &fi->gicr_size);
		fi->gicr_regions = 1;
		if (n->nredist.set && n->nredist.len == 4)
			fi->gicr_regions = be32(n->nredist.v);
	}
	if (compat_has(&n->compat, "arm,gic-v3-its", 0))
		fi->gic_its = 1;
	if (compat_has(&n->compat, "arm,armv8-timer", 0) || compat_has(&n->compat, "arm,armv7-timer", 0)) {
		fi->timer_found = 1;
		for (uint32_t i = 0; i < 4 && (i + 1) * 12 <= n->intr.len; i++)
			fi->timer_ppi[i] = be32(n->intr.v + i * 12 + 4);
		if (n->clockf.set && n->clockf.len == 4)
			fi->timer_clock_frequency = be32(n->clockf.v);
	}
	if (compat_has(&n->compat, "arm,pl011", 0) && *nuarts < MAX_UARTS) {
		uint64_t a, s;
		if (reg_at(&n->reg, parent, 0, &a, &s)) {
			uarts[*nuarts] = a;
			uart_spis[*nuarts] = 0xffffffff;
			if (n->intr.len >= 12 && be32(n->intr.v) == 0)
				uart_spis[*nuarts] = be32(n->intr.v + 4);
			size_t l = strlen(path);
			if (l >= 128)
				l = 127;
			memcpy(uart_paths[*nuarts], path, l);
			uart_paths[*nuarts][l] = 0;
			(*nuarts)++;
		}
	}
}

int fdt_parse(const void *blob, uint32_t maxsize, struct fdt_info *fi)
{
	static struct node st[MAX_DEPTH];
	static char path[256];
	uint64_t uarts[MAX_UARTS];
	uint32_t uart_spis[MAX_UARTS];
	static char uart_paths[MAX_UARTS][128];
	int nuarts = 0;
	const uint8_t *b = blob;
	memset(fi, 0, sizeof(*fi));
	fi->err = "bad header";
	if (!b || ((uint64_t)b & 7) || maxsize < 40)
		return 0;
	if (be32(b) != FDT_MAGIC) {
		fi->err = "bad magic";
		return 0;
	}
	uint32_t total = be32(b + 4), ostruct = be32(b + 8), ostrings = be32(b + 12);
	uint32_t version = be32(b + 20);
	fi->totalsize = total;
	fi->version = version;
	if (total < 40 || total > FDT_MAX_SIZE || total > maxsize || version < 16)
		return 0;
	uint32_t sstrings = be32(b + 32), sstruct = version >= 17 ? be32(b + 36) : total - ostruct;
	if (ostruct > total || sstruct > total - ostruct || ostrings > total || sstrings > total - ostrings || (ostruct & 3)) {
		fi->err = "blocks outside the blob";
		return 0;
	}
	const uint8_t *strs = b + ostrings;
	uint32_t off = ostruct, end = ostruct + sstruct;
	int depth = -1, done = 0;
	size_t plen = 0;
	path[0] = 0;
	fi->err = "bad structure block";
	while (!done) {
		if (off + 4 > end)
			return 0;
		uint32_t tok = be32(b + off);
		off += 4;
		switch (tok) {
		case FDT_BEGIN_NODE: {
			uint32_t l = 0;
			while (off + l < end && b[off + l])
				l++;
			if (off + l >= end || depth + 1 >= MAX_DEPTH)
				return 0;
			depth++;
			struct node *n = &st[depth];
			memset(n, 0, sizeof(*n));
			n->addr_cells = 2;
			n->size_cells = 1;
			uint32_t cl = l < sizeof(n->name) - 1 ? l : sizeof(n->name) - 1;
			memcpy(n->name, b + off, cl);
			n->name[cl] = 0;
			/* Compare names without their unit address. */
			for (char *c = n->name; *c; c++)
				if (*c == '@')
					*c = 0;
			if (depth > 0) {
				if (plen + 1 + l >= sizeof(path))
					return 0;
				if (depth > 1 || plen == 0)
					path[plen++] = '/';
				memcpy(path + plen, b + off, l);
				plen += l;
				path[plen] = 0;
			} else {
				path[0] = '/', path[1] = 0, plen = 1;
			}
			off = (off + l + 1 + 3) & ~3u;
			break;
		}
		case FDT_END_NODE:
			if (depth < 0)
				return 0;
			finish_node(fi, &st[depth], depth ? &st[depth - 1] : &st[0], depth, path, uarts, uart_spis, uart_paths, &nuarts);
			while (plen > 1 && path[plen - 1] != '/')
				plen--;
			if (plen > 1)
				plen--;
			path[plen] = 0;
			depth--;
			break;
		case FDT_PROP: {
			if (off + 8 > end || depth < 0)
				return 0;
			uint32_t len = be32(b + off), nameoff = be32(b + off + 4);
			off += 8;
			if (len > end - off || nameoff >= sstrings)
				return 0;
			uint32_t nl = 0;
			while (nameoff + nl < sstrings && strs[nameoff + nl])
				nl++;
			if (nameoff + nl >= sstrings)
				return 0;
			const char *name = (const char *)strs + nameoff;
			struct node *n = &st[depth];
			struct prop p = {b + off, len, 1};
			if (!strcmp(name, "compatible"))
				n->compat = p;
			else if (!strcmp(name, "reg"))
				n->reg = p;
			else if (!strcmp(name, "device_type"))
				n->dtype = p;
			else if (!strcmp(name, "method"))
				n->method = p;
			else if (!strcmp(name, "enable-method"))
				n->enable = p;
			else if (!strcmp(name, "interrupts"))
				n->intr = p;
			else if (!strcmp(name, "bootargs"))
				n->bootargs = p;
			else if (!strcmp(name, "stdout-path"))
				n->stdout = p;
			else if (!strcmp(name, "clock-frequency"))
				n->clockf = p;
			else if (!strcmp(name, "model"))
				n->model = p;
			else if (!strcmp(name, "#redistributor-regions"))
				n->nredist = p;
			else if (!strcmp(name, "#address-cells") && len == 4)
				n->addr_cells = be32(p.v);
			else if (!strcmp(name, "#size-cells") && len == 4)
				n->size_cells = be32(p.v);
			off = (off + len + 3) & ~3u;
			if (off > end)
				return 0;
			break;
		}
		case FDT_NOP:
			break;
		case FDT_END:
			if (depth != -1)
				return 0;
			done = 1;
			break;
		default:
			return 0;
		}
	}
	/* The console: the PL011 stdout-path names, else the first one. */
	size_t sl = 0;
	while (fi->stdout_path[sl] && fi->stdout_path[sl] != ':')
		sl++;
	for (int i = 0; i < nuarts; i++) {
		if (!fi->uart_found || (strlen(uart_paths[i]) == sl && strncmp(uart_paths[i], fi->stdout_path, sl) == 0)) {
			fi->uart_found = 1;
			fi->uart_base = uarts[i];
			fi->uart_spi = uart_spis[i];
			memcpy(fi->uart_path, uart_paths[i], sizeof(fi->uart_path));
		}
	}
	fi->ok = 1;
	fi->err = 0;
	return 1;
}

/* fdt_bootarg: the value of key=value in the space-separated bootargs
 * (the last occurrence wins); 1 if found. */
int fdt_bootarg(const char *args, const char *key, char *val, size_t n)
{
	int found = 0;
	size_t kl = strlen(key);
	if (!args || !n)
		return 0;
	for (const char *p = args; *p;) {
		while (*p == ' ')
			p++;
		const char *w = p;
		while (*p && *p != ' ')
			p++;
		if ((size_t)(p - w) > kl && strncmp(w, key, kl) == 0 && w[kl] == '=') {
			size_t l = p - w - kl - 1;
			if (l >= n)
				l = n - 1;
			memcpy(val, w + kl + 1, l);
			val[l] = 0;
			found = 1;
		}
	}
	return found;
}
