<%@ page contentType="application/json; charset=UTF-8" import="java.util.stream.*,java.time.*,java.security.MessageDigest,java.util.HexFormat" %>
<%
  long sum = LongStream.rangeClosed(1, 1000).sum();
  String day = LocalDate.of(2026, 11, 30).getDayOfWeek().toString();
  String sha = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest("cimplifier".getBytes("UTF-8")));
%>{"sum": <%= sum %>, "day": "<%= day %>", "sha256": "<%= sha %>", "el": "${1 + 2}"}
