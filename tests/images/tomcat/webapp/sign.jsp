<%@ page contentType="text/html; charset=UTF-8" import="java.nio.file.*,java.nio.charset.StandardCharsets" %>
<%
  request.setCharacterEncoding("UTF-8");
  String name = request.getParameter("name");
  if (name == null || name.isBlank()) {
    response.setStatus(422);
%><p>A name, please.</p><%
  } else {
    Path book = Paths.get("/var/lib/guestbook/entries.txt");
    Files.writeString(book, name.strip() + "\n", StandardCharsets.UTF_8,
        StandardOpenOption.CREATE, StandardOpenOption.APPEND);
%><p>Thank you, <%= name.strip().replace("&", "&amp;").replace("<", "&lt;") %>.</p><%
  }
%>
