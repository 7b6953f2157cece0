# Shipped by amberpi: flattens a cloud-init NoCloud file (user-data,
# network-config, meta-data as Raspberry Pi Imager writes them) into lines sh
# can read (flat.sh):
#
#   awk -f /usr/lib/amberpi/yaml-flat.awk FILE > FLAT
#
# Output, one line per scalar leaf in document order: PATH<TAB>VALUE.
#   PATH   mapping keys and sequence indexes (from 0) joined by "/"; in a key
#          "%" is written %25, "/" %2F, tab %09, newline %0A.
#   VALUE  the scalar unquoted, then "\" written \\, newline \n, tab \t.
#   `key:`, `key: ~`, `key: null`, `[]` and `{}` give PATH<TAB> (empty value).
#   A duplicate key gives both lines; readers take the last, as PyYAML does.
#
# The YAML subset read; anything else is an error, never a guess:
#   - block mappings and sequences at any depth, a sequence at its key's own
#     indentation, compact `- key: value` and `- - item` items;
#   - plain scalars (a ` #comment` after them is dropped), 'single' quoted
#     ('' is '), "double" quoted (\\ \" \/ \n \t \r \b \f \a \v \e \<space>),
#     each on one line; quoted keys and keys with spaces;
#   - block scalars | |- |+ > >- >+ (the indentation is detected, not given);
#   - flow sequences of scalars on one line: [ sh, -c, "echo a, b" ], [];
#   - comments, blank lines, #cloud-config, a leading ---, a trailing ...,
#     CRLF line ends, a UTF-8 BOM.
#   As in YAML, `key: a: b` is an error (quote the value); `- a: b` is a
#   mapping in a sequence. As in PyYAML (cloud-init), a tab outside quotes,
#   comments and block scalar text is an error.
# Not read: anchors, aliases, tags, flow mappings with content, nested flow
# collections, multi-line plain or quoted scalars, `? ` keys, directives, a
# second document.
#
# Errors: exit status 2, nothing on stdout (the output is held until the end),
# one line on stderr: FILE:LINE: what is wrong (how to fix it).
# Plain POSIX awk: mawk, busybox awk and gawk --posix read it alike, so no
# regex intervals, no gsub with backslashes (literal replace() instead).

BEGIN {
	BOM = "\357\273\277"
	nout = 0        # lines held for the END
	depth = 0       # open block collections: kind[] "m"/"s", ind[], path[], idx[]
	pending = 0     # a `key:` or `-` with nothing after it, waiting for its block
	inblock = 0     # reading the lines of a block scalar
	started = 0     # some content seen
	dashes = 0      # a --- seen
	ended = 0       # a ... seen
	failed = 0
}

{
	line = $0
	# index and length, not a byte regex: gawk in a UTF-8 locale sees one character.
	if (FNR == 1 && index(line, BOM) == 1)
		line = substr(line, length(BOM) + 1)
	sub(/\r$/, "", line)
	if (inblock && block_line(line))
		next
	doc_line(line)
}

END {
	if (failed)
		exit 2
	if (inblock)
		block_end()
	if (pending)
		emit(ppath, "")
	for (i = 1; i <= nout; i++)
		print out[i]
}

function fail(what, fix) {
	# Through cat, not > "/dev/stderr": an awk may reopen that path (gawk
	# --posix does), truncating a log file stderr is redirected to.
	printf "%s:%d: %s (%s)\n", (FILENAME == "" ? "-" : FILENAME), FNR, what, fix | "cat >&2"
	close("cat >&2")
	failed = 1
	exit 2
}

function replace(s, from, to,   r, i) {
	# Literal, unlike gsub, whose "\\" and "&" each awk reads its own way.
	r = ""
	while ((i = index(s, from)) > 0) {
		r = r substr(s, 1, i - 1) to
		s = substr(s, i + length(from))
	}
	return r s
}

function emit(p, v) {
	v = replace(replace(replace(v, "\\", "\\\\"), "\n", "\\n"), "\t", "\\t")
	out[++nout] = p "\t" v
}

function key_name(k) {
	return replace(replace(replace(replace(k, "%", "%25"), "/", "%2F"), "\t", "%09"), "\n", "%0A")
}

function join(p, c) {
	return p == "" ? c : p "/" c
}

function push(k, n, p) {
	depth++
	kind[depth] = k
	ind[depth] = n
	path[depth] = p
	idx[depth] = 0
}

function is_dash(t) {
	return t ~ /^-([ \t]|$)/
}

function rest_blank(r) {
	# What may follow a complete node on its line: spaces and a comment.
	if (r ~ /^ *\t/)
		tab()
	return r ~ /^( +(#.*)?)?$/
}

function tab() {
	fail("a tab outside quotes", "use spaces; PyYAML, which cloud-init reads this with, refuses tabs between tokens too")
}

function sep(s) {
	# The spaces at the start of s, between tokens.
	match(s, /^ */)
	if (substr(s, RLENGTH + 1, 1) == "\t")
		tab()
	return RLENGTH
}

# --- lines outside block scalars -------------------------------------------

function doc_line(line) {
	match(line, /^ */)
	if (substr(line, RLENGTH + 1, 1) == "\t")
		fail("a tab in the indentation", "indent with spaces only")
	if (RLENGTH == length(line) || substr(line, RLENGTH + 1, 1) == "#")
		return
	if (line ~ /^---([ \t]|$)/) {
		if (started || dashes || ended)
			fail("a second document: --- after content", "one document per file; remove this ---")
		if (!rest_blank(substr(line, 4)))
			fail("content on the --- line", "start the document on the next line")
		dashes = 1
		return
	}
	if (line ~ /^\.\.\.([ \t]|$)/) {
		if (!rest_blank(substr(line, 4)))
			fail("content on the ... line", "nothing may follow the end of the document")
		ended = 1
		return
	}
	if (ended)
		fail("content after the end of the document, ...", "one document per file; remove the ... line")
	if (substr(line, 1, 1) == "%")
		fail("a directive %...", "directives are not supported; remove the line")
	match(line, /^ */)
	started = 1
	node_line(RLENGTH, substr(line, RLENGTH + 1))
}

function node_line(n, t,   popped) {
	# The block collection this line belongs to: a new one under a pending
	# `key:` or `-`, or an open one at exactly its indentation.
	if (pending) {
		pending = 0
		if (n > pcol || (n == pcol && pkind == "key" && is_dash(t))) {
			push(is_dash(t) ? "s" : "m", n, ppath)
			entry(n, t)
			return
		}
		emit(ppath, "")
	}
	if (depth == 0) {
		push(is_dash(t) ? "s" : "m", n, "")
		entry(n, t)
		return
	}
	popped = 0
	while (depth > 0 && ind[depth] > n) {
		depth--
		popped = 1
	}
	if (depth == 0 || ind[depth] < n) {
		if (popped)
			fail("inconsistent indentation", "a line must line up with the entries of an enclosing mapping or sequence")
		fail("unexpected indentation", "only a `key:` or `-` with nothing after it may be followed by deeper lines; for a long value use quotes or a block scalar |")
	}
	# A sequence at its key's own indentation ends at the key's next sibling.
	if (kind[depth] == "s" && !is_dash(t) && depth > 1 && kind[depth - 1] == "m" && ind[depth - 1] == n)
		depth--
	entry(n, t)
}

function entry(n, t,   k) {
	if (kind[depth] == "s") {
		if (!is_dash(t))
			fail("expected a sequence item `- ...`", "a sequence's lines each start with - at the same indentation")
		k = 1 + sep(substr(t, 2))
		value(n, n + k, substr(t, k + 1), join(path[depth], idx[depth]++), "dash")
		return
	}
	if (is_dash(t))
		fail("a sequence item where a mapping entry is expected", "write `key: value` here, or indent the - under a `key:`")
	indicators(t)
	if (substr(t, 1, 1) == "{")
		fail("a flow mapping {...}", "only {} (empty) is supported, as a value; write a block mapping, one `key: value` per line")
	if (substr(t, 1, 1) == "[")
		fail("a flow sequence [...] where a mapping entry is expected", "flow sequences are read only as values: key: [a, b]")
	if (!is_entry(t))
		fail("expected a mapping entry `key: value`", "write `key: value`, `key:` before a deeper block, or quote a key with special characters")
	value(n, n + KEYSKIP, KEYREST, join(path[depth], key_name(KEY)), "key")
}

function indicators(t,   c, c2) {
	# Node properties and reserved characters that this subset refuses.
	c = substr(t, 1, 1)
	c2 = substr(t, 2, 1)
	if (c == "&")
		fail("an anchor &name", "anchors and aliases are not supported; write the value out, or quote it")
	if (c == "*")
		fail("an alias *name", "anchors and aliases are not supported; write the value out, or quote it")
	if (c == "!")
		fail("a tag !tag", "tags are not supported; quote the value to keep it a string")
	if (c == "?" && (c2 == "" || c2 == " " || c2 == "\t"))
		fail("a complex key `? `", "write a plain or quoted key: `key: value`")
	if (c == ":" && (c2 == "" || c2 == " " || c2 == "\t"))
		fail("a mapping entry without a key", "write `key: value`")
	if (c == "%" || c == "@" || c == "`" || c == "," || c == "]" || c == "}")
		fail("a plain value starting with " c, "quote the value")
}

function is_entry(t,   c, i, j, r) {
	# Is t `key: ...`? Sets KEY, KEYREST (the value text) and KEYSKIP (its offset in t).
	c = substr(t, 1, 1)
	if (c == "\"" || c == "'") {
		KEY = quoted(t)
		i = QEND + sep(substr(t, QEND))
		if (substr(t, i, 1) != ":")
			return 0
	} else {
		if (index("[]{}|>&*!%@`,#", c))
			return 0
		i = 0
		for (;;) {
			j = index(substr(t, i + 1), ":")
			if (!j)
				return 0
			i += j
			c = substr(t, i + 1, 1)
			if (c == "" || c == " " || c == "\t")
				break
		}
		KEY = substr(t, 1, i - 1)
		if (index(KEY, " #"))
			return 0
		sub(/ +$/, "", KEY)
		if (KEY == "")
			return 0
		if (index(KEY, "\t"))
			tab()
	}
	c = substr(t, i + 1, 1)
	if (c != "" && c != " " && c != "\t")
		return 0
	r = substr(t, i + 1)
	KEYSKIP = i + sep(r)
	KEYREST = substr(t, KEYSKIP + 1)
	return 1
}

function value(oc, vc, v, p, how,   c, s) {
	# The node after `key:` or `-`: v starts at column vc; oc is the column
	# of the key or dash, which a block below it must be indented past.
	if (v == "" || substr(v, 1, 1) == "#") {
		pending = 1
		pcol = oc
		ppath = p
		pkind = how
		return
	}
	indicators(v)
	c = substr(v, 1, 1)
	if (how == "dash" && is_dash(v)) {
		push("s", vc, p)
		entry(vc, v)
		return
	}
	if (how == "key" && is_dash(v))
		fail("a sequence on the line of its key", "start the sequence on the next line: `key:` then `- item` lines")
	if (how == "dash" && is_entry(v)) {
		push("m", vc, p)
		entry(vc, v)
		return
	}
	if (c == "|" || c == ">") {
		block_start(oc, v, p)
		return
	}
	if (c == "[") {
		flow_seq(v, p)
		return
	}
	if (c == "{") {
		if (v !~ /^\{ *\}/ || !rest_blank(substr(v, index(v, "}") + 1)))
			fail("a flow mapping {...}", "only {} (empty) is supported, as a value; write a block mapping, one `key: value` per line")
		emit(p, "")
		return
	}
	if (c == "\"" || c == "'") {
		s = quoted(v)
		if (!rest_blank(substr(v, QEND)))
			fail("text after a quoted value", "put the whole value inside the quotes")
		emit(p, s)
		return
	}
	s = plain(v)
	if (s ~ /:([ \t]|$)/)
		fail("a plain value containing \": \"", "as in YAML, `key: a: b` is an error; quote the value: key: \"a: b\"")
	emit(p, s)
}

function plain(v,   i) {
	i = index(v, " #")
	if (i)
		v = substr(v, 1, i - 1)
	sub(/ +$/, "", v)
	if (index(v, "\t"))
		tab()
	if (v == "~" || v == "null" || v == "Null" || v == "NULL")
		return ""
	return v
}

function quoted(t,   q, i, j, n, c, e, r) {
	# The quoted scalar t starts with; QEND is the index just past its closing quote.
	q = substr(t, 1, 1)
	r = ""
	i = 2
	if (q == "'") {
		for (;;) {
			j = index(substr(t, i), "'")
			if (!j)
				fail("an unterminated 'quoted' scalar", "close the quote on the same line; quoted values may not span lines")
			r = r substr(t, i, j - 1)
			i += j
			if (substr(t, i, 1) != "'")
				break
			r = r "'"
			i++
		}
		QEND = i
		return r
	}
	n = length(t)
	while (i <= n) {
		c = substr(t, i, 1)
		if (c == "\"") {
			QEND = i + 1
			return r
		}
		if (c == "\\") {
			e = substr(t, i + 1, 1)
			if (e == "\\" || e == "\"" || e == "/" || e == " " || e == "\t") c = e
			else if (e == "n") c = "\n"
			else if (e == "t") c = "\t"
			else if (e == "r") c = "\r"
			else if (e == "b") c = "\b"
			else if (e == "f") c = "\f"
			else if (e == "a") c = "\007"
			else if (e == "v") c = "\013"
			else if (e == "e") c = "\033"
			else if (e == "")
				break
			else
				fail("the escape \\" e " in a \"double quoted\" scalar", "supported: \\\\ \\\" \\/ \\n \\t \\r \\b \\f \\a \\v \\e; write other characters themselves, in UTF-8")
			i++
		}
		r = r c
		i++
	}
	fail("an unterminated \"quoted\" scalar", "close the quote on the same line; quoted values may not span lines")
}

function flow_seq(v, p,   i, c, k, s, j) {
	# [a, 'b', "c"] on one line: items p/0 .. p/n-1; [] is an empty value.
	i = 2
	k = 0
	for (;;) {
		i += sep(substr(v, i))
		c = substr(v, i, 1)
		if (c == "]")
			break
		if (c == "" || c == "#")
			fail("an unterminated flow sequence [", "close it with ] on the same line")
		if (c == "[" || c == "{")
			fail("a nested flow collection", "only scalars may be items of [...]; write a block sequence")
		if (c == ",")
			fail("an empty item in a flow sequence", "remove the extra comma")
		if (c == "\"" || c == "'") {
			s = quoted(substr(v, i))
			i += QEND - 1
		} else {
			indicators(substr(v, i))
			if (substr(v, i, 2) ~ /^-([ \t]|$)/)
				fail("a block sequence item inside [...]", "write the items as [a, b]")
			for (j = i; j <= length(v); j++) {
				c = substr(v, j, 1)
				if (c == "," || c == "]" || c == "[" || c == "{" || c == "}")
					break
				if (c == "#" && substr(v, j - 1, 1) == " ")
					break
			}
			if (c == "[" || c == "{" || c == "}")
				fail("a nested flow collection", "only scalars may be items of [...]; write a block sequence")
			s = substr(v, i, j - i)
			i = j
			sub(/ +$/, "", s)
			if (s ~ /:([ \t]|$)/)
				fail("a flow mapping inside [...]", "quote the item")
			s = plain(s)
		}
		emit(join(p, k++), s)
		i += sep(substr(v, i))
		c = substr(v, i, 1)
		if (c == "]")
			break
		if (c == "" || c == "#")
			fail("an unterminated flow sequence [", "close it with ] on the same line")
		if (c != ",")
			fail("unexpected text in a flow sequence", "separate items with commas; quote items with special characters")
		i++
	}
	if (!rest_blank(substr(v, i + 1)))
		fail("text after a flow sequence", "nothing but a comment may follow ]")
	if (k == 0)
		emit(p, "")
}

# --- block scalars ----------------------------------------------------------

function block_start(oc, v, p,   h) {
	bstyle = substr(v, 1, 1)
	h = substr(v, 2)
	bchomp = ""
	if (substr(h, 1, 1) == "-" || substr(h, 1, 1) == "+") {
		bchomp = substr(h, 1, 1)
		h = substr(h, 2)
	}
	if (h ~ /^[0-9]/)
		fail("an explicit indentation indicator on a block scalar", "remove the digit: the indentation is taken from the first line")
	if (!rest_blank(h))
		fail("text after a block scalar indicator " bstyle, "start the text on the next line, indented")
	inblock = 1
	bparent = oc
	bind = 0
	bpath = p
	bn = 0
}

function block_line(line,   s) {
	# Takes the line into the block scalar (1), or ends the scalar (0) when
	# the line is indented less than it.
	match(line, /^ */)
	s = RLENGTH
	if (s == length(line)) {
		bn++
		bempty[bn] = !(bind && s > bind)
		btext[bn] = bempty[bn] ? "" : substr(line, bind + 1)
		return 1
	}
	if (!bind) {
		if (s <= bparent) {
			block_end()
			return 0
		}
		bind = s
	}
	if (s < bind) {
		block_end()
		return 0
	}
	bn++
	bempty[bn] = 0
	btext[bn] = substr(line, bind + 1)
	return 1
}

function block_end(   i, v, brk, lb, lead, c) {
	# PyYAML's folding and chomping: in > a single line break between two
	# lines that do not start with a space becomes a space.
	inblock = 0
	v = ""
	lb = ""
	brk = ""
	for (i = 1; i <= bn && bempty[i]; i++)
		brk = brk "\n"
	while (i <= bn) {
		v = v brk btext[i]
		c = substr(btext[i], 1, 1)
		lead = c != " " && c != "\t"
		lb = "\n"
		brk = ""
		for (i++; i <= bn && bempty[i]; i++)
			brk = brk "\n"
		if (i > bn)
			break
		c = substr(btext[i], 1, 1)
		if (bstyle == ">" && lead && c != " " && c != "\t") {
			if (brk == "")
				v = v " "
		} else
			v = v lb
	}
	if (bchomp != "-")
		v = v lb
	if (bchomp == "+")
		v = v brk
	emit(bpath, v)
}
