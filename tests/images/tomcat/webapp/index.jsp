<%@ page contentType="text/html; charset=UTF-8" import="java.nio.file.*,java.util.*" %>
<%! static final Path BOOK = Paths.get("/var/lib/guestbook/entries.txt"); %>
<%
  List<String> entries = Files.exists(BOOK) ? Files.readAllLines(BOOK) : List.of();
%>
<!doctype html>
<html><head><title>Guestbook</title></head>
<body>
<h1>Guestbook</h1>
<p><%= entries.size() %> entries</p>
<ul>
<% for (String e : entries) { %>  <li><%= e.replace("&", "&amp;").replace("<", "&lt;") %></li>
<% } %></ul>
<form method="post" action="sign.jsp"><input name="name"><button>Sign</button></form>
</body></html>
